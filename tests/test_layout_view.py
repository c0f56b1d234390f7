"""`ftlab layout`: the pictures against the kernel's numbers (written here from the research notes,
/work/shared/reference/kernel-tracing.md §3 and §4, not from the lab's tables), against the lab's
tables they are drawn from, and against what a lab run captures."""

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from emulator import arch as cpus
from helpers import ARCHES, ftlab
from tracers.arch import kernel_arch
from tracers.call_syntax import parse_calls
from tracers.cli.main import main
from tracers.cli.mechanisms import capture_all
from tracers.core.fgraph import GUEST_PUSH
from tracers.kernel_version import MODELLED, KernelVersion
from tracers.output.records import records_of
from tracers.views import layout_svg, layout_text
from tracers.views.structures import ABSENT, NAMES, NOT_STORED, SAVED, WRITTEN, picture

SVG = "{http://www.w3.org/2000/svg}"
X86_PT_REGS = dict(
    zip(
        "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss".split(),
        range(0, 168, 8),
        strict=True,
    )
)
ARM64_PT_REGS = {**{f"x{n}": 8 * n for n in range(31)}, "sp": 248, "pc": 256, "pstate": 264}
ARM64_FREGS = {**{f"x{n}": 8 * n for n in range(9)}, "direct_tramp": 72, "fp": 80, "lr": 88, "sp": 96, "pc": 104}
# (the kernel's offsets, sizeof): §3; x86's ftrace_regs wraps a pt_regs
KERNEL = {
    ("pt_regs", "x86_64"): (X86_PT_REGS, 168),
    ("pt_regs", "arm64"): (ARM64_PT_REGS, 336),  # PT_REGS_SIZE; the lab names the first 272 bytes
    ("ftrace_regs", "x86_64"): (X86_PT_REGS, 168),
    ("ftrace_regs", "arm64"): (ARM64_FREGS, 112),  # FREGS_SIZE
}
# §4: struct ftrace_ret_stack {ret, func, [fp: HAVE_FUNCTION_GRAPH_FP_TEST, arm64], retp}, then the
# bitmap word (bits 0-9 offset, 10-11 type, 12-27 the users) and a data word's header (size-1 in 5
# bits and the user in 4, above the same offset and type)
RET_STACK = {"x86_64": ["ret", "func", "retp"], "arm64": ["ret", "func", "fp", "retp"]}
BITMAP_BITS = "bits 0-9 frame_offset, 10-11 type, 12-27 index"
HEADER_BITS = "bits 0-9 frame_offset, 10-11 type, 12-16 data, 17-20 data_index"
# arch/*/net/bpf_jit_comp.c's frame for 2 arguments, CALL_ORIG | IP_ARG, worked out by hand from
# its stack_size arithmetic. x86: below rbp (run_ctx_off 64, rbx_off 48, ip_off 40, nregs_off 32,
# regs_off 24, the return value at 8); arm64: above sp (retaddr_off 88 = 80 + 8).
BPF_X86_BELOW_RBP = {
    "bpf_tramp_run_ctx": 64,
    "rbx value": 48,
    "traced function": 40,
    "regs count": 32,
    "reg_arg1": 24,
    "reg_arg2": 16,
    "return value": 8,
    "RBP": 0,
    "return address": -8,
}
BPF_ARM64_ABOVE_SP = {
    "bpf_tramp_run_ctx": 0,
    "traced function": 16,
    "arg regs count": 24,
    "arg reg 1": 32,
    "arg reg 2": 40,
    "return value": 48,
    "x19": 56,
    "x20": 64,
    "self ip": 88,
    "parent ip": 104,
}


def _offsets(p):
    return {f.name: f.offset for f in p.fields}


@pytest.mark.parametrize("name", ["pt_regs", "ftrace_regs"])
def test_offsets_and_sizes_are_the_kernels(name, arch):
    offsets, size = KERNEL[(name, arch)]
    p = picture(name, arch, MODELLED)
    assert _offsets(p) == offsets and p.size == size
    assert all(f.size == 8 for f in p.fields)
    assert p.gaps() == ([(272, 64)] if (name, arch) == ("pt_regs", "arm64") else [])


def test_the_shadow_stack_frame_is_the_kernels(arch):
    p = picture("ftrace_ret_stack", arch, MODELLED)
    words = [*RET_STACK[arch], "bitmap", "data", "header"]
    assert _offsets(p) == {w: 8 * n for n, w in enumerate(words)}
    notes = {f.name: f.note for f in p.fields}
    assert (notes["bitmap"], notes["header"]) == (BITMAP_BITS, HEADER_BITS)
    assert f"struct ftrace_ret_stack ({8 * len(RET_STACK[arch])} bytes)" in p.struct


def test_the_bpf_trampoline_frame_is_the_kernels():
    x86 = picture("bpf_tramp_frame", "x86_64", MODELLED)
    rbp = x86.size - 16  # the frame ends with the saved rbp and the return address
    assert {f.name: rbp - f.offset for f in x86.fields} == BPF_X86_BELOW_RBP
    arm = picture("bpf_tramp_frame", "arm64", MODELLED)
    got = {f.name: f.offset for f in arm.fields if f.name != "FP"}
    assert got == BPF_ARM64_ABOVE_SP and [f.offset for f in arm.fields if f.name == "FP"] == [80, 96]
    assert arm.gaps() == [(72, 8)]  # the padding to 16 bytes


@pytest.mark.parametrize("nr_args", [0, 1, 6])
def test_the_bpf_frame_ctx_is_where_the_emitted_code_points_programs(arch, nr_args):
    """ctx[i] is the slot at the ctx pointer the trampoline passes (ctx_from_body_sp) plus 8 i."""
    tramp = kernel_arch(cpus.get(arch)).direct_calls.trampoline
    p = picture("bpf_tramp_frame", arch, MODELLED, nr_args)
    frame = tramp.Frame(nr_args, tramp_flags := _fexit_flags())
    ctx = tramp.ctx_from_body_sp(nr_args, tramp_flags)
    indexed = {int(f.note[4:-1]): f.offset for f in p.fields if f.note.startswith("ctx[")}
    assert indexed == {i: ctx + 8 * i for i in range(-2, nr_args + 1)}
    assert frame.size <= p.size


def _fexit_flags():
    from tracers.core.bpf_trampoline import trampoline_flags

    return trampoline_flags({"fexit"}, wants_ip=True)


def _tables(name, arch, kernel=MODELLED):
    """The lab's table each picture is drawn from (None: no guest layout)."""
    karch = kernel_arch(cpus.get(arch))
    recs = records_of(karch, kernel)
    return {
        "ftrace_regs": karch.ftrace_regs,
        "pt_regs": karch.pt_regs,
        "ftrace_ret_stack": GUEST_PUSH[karch.fgraph.fp_test],
        "ftrace_entry": recs.function,
        "ftrace_graph_ent_entry": recs.graph_entry,
        "ftrace_graph_ret_entry": recs.graph_exit,
    }.get(name)


@pytest.mark.parametrize("name", NAMES)
def test_the_text_draws_every_field_at_its_offset(name, arch):
    p = picture(name, arch, MODELLED)
    table = _tables(name, arch)
    if table is not None:
        assert _offsets(p) == table.offsets and p.size == table.size
    text = layout_text.render(name, [arch], MODELLED)
    for f in p.fields:
        offset, size = ("-", "-") if f.offset is None else (f.offset, f.size)
        row = rf"^ *{offset} +{size}  {re.escape(f.name)}( |$)"
        assert re.search(row, text, re.MULTILINE), (f.name, text)


def _svg(name, arches, kernel=MODELLED):
    svg = layout_svg.render(name, arches, kernel)
    return svg, ET.fromstring(svg)


@pytest.mark.parametrize("name", NAMES)
def test_the_svg_has_a_box_per_field_at_its_offset(name):
    svg, root = _svg(name, ARCHES)
    assert root.tag == f"{SVG}svg" and root.find(f"{SVG}title") is not None
    assert not svg.startswith("<?xml")
    boxes = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "field"]
    pictures = [picture(name, a, MODELLED) for a in ARCHES]
    assert len(boxes) == sum(len(p.fields) for p in pictures)
    texts = [(t.text, float(t.get("x")), float(t.get("y"))) for t in root.iter(f"{SVG}text")]
    drawn = [(p, f) for p in pictures for _, _, f in p.spans() if f is not None]
    for box, (pic, f) in zip(boxes, drawn, strict=True):
        x, y = float(box.get("x")), float(box.get("y"))
        assert float(box.get("height")) == (24 if f.size is None else f.size * layout_svg.PX_PER_BYTE)
        labels = [t for t, tx, ty in texts if ty == y + 15 and x < tx < x + float(box.get("width"))]
        assert labels and labels[0].startswith(f.name), (f.name, labels)
        offsets = [t for t, tx, ty in texts if ty == y + 13 and x - layout_svg.OFFSET_W <= tx < x]
        assert offsets == ([] if f.offset is None else [str(f.offset)]), (pic.arch, f.name, offsets)


@pytest.mark.parametrize("name", NAMES)
def test_the_svg_is_self_contained_and_the_output_deterministic(name):
    svg, root = _svg(name, ARCHES)
    for el in root.iter():
        assert el.tag.split("}")[1] not in ("image", "script", "style", "foreignObject", "a", "use"), el.tag
        assert not any("href" in attr for attr in el.attrib), el.attrib
    assert "url(" not in svg and "@import" not in svg and "http" not in svg.replace(SVG[1:-1], "")
    assert layout_svg.render(name, ARCHES, MODELLED) == svg
    assert layout_text.render(name, ARCHES, MODELLED) == layout_text.render(name, ARCHES, MODELLED)


def test_the_output_is_the_same_in_another_process():
    code = (
        "from tracers.views import layout_svg, layout_text; from tracers.kernel_version import MODELLED as K\n"
        "print(layout_svg.render('pt_regs', ['x86_64', 'arm64'], K) + layout_text.render('ftrace_regs', "
        "['x86_64', 'arm64'], K), end='')"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] != ""


def _marks(name, arch, key, kernel=MODELLED):
    p = picture(name, arch, kernel)
    [m] = [m for m in p.mechanisms if m.key == key]
    return {f.name: p.mark(f, m) for f in p.fields}, m


def test_ftrace_caller_stores_what_the_kernels_stores():
    """§2: x86's ftrace_caller stores rax, rcx, rdx, rsi, rdi, r8, r9, rbp, ip and sp, sets
    orig_ax and cs to 0, and leaves rbx, r10-r15, flags and ss; arm64's stores x0-x8, fp, lr, sp
    and pc, and clears direct_tramp."""
    marks, _ = _marks("ftrace_regs", "x86_64", "C")
    assert {f for f, m in marks.items() if m == SAVED} == set("ax cx dx si di r8 r9 bp ip sp".split())
    assert {f for f, m in marks.items() if m == WRITTEN} == {"orig_ax", "cs"}
    assert {f for f, m in marks.items() if m == NOT_STORED} == set("bx r10 r11 r12 r13 r14 r15 flags ss".split())
    marks, _ = _marks("ftrace_regs", "arm64", "C")
    assert marks == {**dict.fromkeys(ARM64_FREGS, SAVED), "direct_tramp": WRITTEN}


def test_arm64_pstate_is_the_exceptions_alone():
    """§2/§5: arm64 has no ftrace_regs_caller (PSTATE needs an exception); before 6.18
    ftrace_partial_regs leaves pstate unfilled, since then it writes PSR_MODE_EL1h, not the
    register; the kretprobe trampoline's pstate is BRK's exception's since 6.9."""
    for kernel, partial in ((KernelVersion(6, 17), NOT_STORED), (MODELLED, WRITTEN)):
        p = picture("pt_regs", "arm64", kernel)
        [pstate] = [f for f in p.fields if f.name == "pstate"]
        marks = {m.key: p.mark(pstate, m) for m in p.mechanisms}
        assert marks == {"E": SAVED, "T": SAVED, "R": ABSENT, "P": partial}
        [regs_caller] = [m for m in p.mechanisms if m.key == "R"]
        assert "PSTATE cannot be saved without taking an exception" in regs_caller.absent
        assert "BRK" in next(m.what for m in p.mechanisms if m.key == "T")
    marks, _ = _marks("pt_regs", "x86_64", "R")
    assert marks["flags"] == SAVED and marks["orig_ax"] == WRITTEN  # pushfq: x86 can


# `ftlab regs` mechanisms -> (picture, column)
COLUMNS = {
    "kprobe": ("pt_regs", "E"),
    "ftrace_caller": ("ftrace_regs", "C"),
    "ftrace_regs_caller": ("pt_regs", "R"),
    "partial_regs": ("pt_regs", "P"),
    "rethook": ("pt_regs", "T"),
    "fgraph_exit": ("ftrace_regs", "F"),
}


@pytest.mark.parametrize("kernel", [KernelVersion(6, 8), KernelVersion(6, 17), MODELLED], ids=str)
def test_what_the_pictures_say_is_filled_is_what_a_lab_run_captures(arch, kernel):
    """Every mechanism, run at fib's entry: a field its column marks S is one its snapshot
    captured (never in its `missing`), and all it captured is marked S or w; a mechanism the arch
    refuses is absent from the picture, for the same reason."""
    from tracers import Lab

    lab = Lab.open("funcs", arch, kernel=kernel)
    aliases = lab.karch.ftrace_regs_aliases
    for c in capture_all(lab, "fib", parse_calls("fib(3)")):
        name, key = COLUMNS[c.mechanism]
        marks, mech = _marks(name, arch, key, kernel)
        if c.refused:
            assert mech.absent == c.refused
            continue
        assert c.kind == name and mech.absent is None
        saved = {f for f, m in marks.items() if m == SAVED}
        assert saved <= set(c.fields) <= saved | {f for f, m in marks.items() if m == WRITTEN}, c.mechanism
        assert not {aliases.get(f, f) for f in saved} & set(c.missing), c.mechanism


def test_the_cli(capsys, tmp_path):
    out = ftlab(capsys, "layout", "pt_regs", "--arch", "arm64")
    assert out == layout_text.render("pt_regs", ["arm64"], MODELLED)
    path = tmp_path / "regs.svg"
    assert ftlab(capsys, "layout", "ftrace_regs", "--format", "svg", "-o", str(path)) == ""
    assert path.read_text() == layout_svg.render("ftrace_regs", ARCHES, MODELLED)
    assert ftlab(capsys, "layout", "--list").split() == list(NAMES)


@pytest.mark.parametrize(
    "argv, error",
    [
        (["nosuch"], "layout: no structure 'nosuch' (one of: ftrace_regs, pt_regs, "),
        ([], "layout: no NAME given (one of: "),
        (["pt_regs", "--arch", "sparc"], "--arch sparc: expected x86_64, arm64 or all"),
        (["pt_regs", "--nr-args", "3"], "layout pt_regs: --nr-args is for bpf_tramp_frame only"),
        (["bpf_tramp_frame", "--nr-args", "7"], "--nr-args 7: x86_64: 0 to 6 (x86_64's trampoline takes"),
        (["pt_regs", "-o", "/nonexistent/x.txt"], "/nonexistent/x.txt: No such file or directory"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, error):
    assert main(["layout", *argv]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"ftlab: error: {error}") and err.count("\n") == 1, err


def test_the_docs_picture_is_what_the_lab_draws():
    """docs/pictures/layout-ftrace_regs.svg (the README's) is `ftlab layout ftrace_regs --format svg
    -o docs/pictures/layout-ftrace_regs.svg`; rerun that after a change of the picture."""
    path = Path(__file__).resolve().parent.parent / "docs" / "pictures" / "layout-ftrace_regs.svg"
    assert path.read_text() == layout_svg.render("ftrace_regs", ARCHES, MODELLED)
