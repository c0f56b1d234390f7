"""`ftlab step`: the instructions of one hit, each store named by the struct and field it fills.

The names are checked against the kernel's offsets (kernel-tracing.md §3, written out here, not
taken from the lab's tables), the stored values against the true registers at the hit (a separate
verified run), and the instructions against a per-instruction count made by a different hook."""

import itertools
import json

import pytest

from emulator.asm import decode
from helpers import ARCHES, ftlab
from tracers import Lab
from tracers.call_syntax import parse_calls
from tracers.cli.main import main
from tracers.cli.mechanisms import capture
from tracers.cli.step import RETURNS, STEP_MECHANISMS, record

CALL = parse_calls("chain_a(3)")
FUNC = "chain_c"

# struct ftrace_regs as the kernel lays it out (arch/x86/include/asm/ptrace.h pt_regs;
# arch/arm64/include/asm/ftrace.h __arch_ftrace_regs, FREGS_* in asm-offsets)
FTRACE_REGS_OFFSETS = {
    "x86_64": {
        "r9": 64,
        "r8": 72,
        "ax": 80,
        "cx": 88,
        "dx": 96,
        "si": 104,
        "di": 112,
        "orig_ax": 120,
        "ip": 128,
        "cs": 136,
        "sp": 152,
        "bp": 32,
    },
    "arm64": {
        **{f"x{n}": 8 * n for n in range(9)},
        "direct_tramp": 72,
        "fp": 80,
        "lr": 88,
        "sp": 96,
        "pc": 104,
    },
}


def stores_of(hit, struct):
    return [(s, a) for w in hit.recorder.walks for s in w.steps for a in s.stores if a.struct == struct]


@pytest.mark.parametrize("arch", ARCHES)
def test_ftrace_caller_stores_name_the_kernels_offsets_and_hold_the_true_registers(arch):
    hit = record(Lab.open("funcs", arch), "ftrace_caller", FUNC, None, CALL)
    truth_lab = Lab.open("funcs", arch)
    c = capture(truth_lab, "ftrace_caller", FUNC, CALL)
    stores = stores_of(hit, "ftrace_regs")
    # every store into the ftrace_regs lands at the kernel's offset of the field it is named
    assert stores and all(a.addr - c.addr == FTRACE_REGS_OFFSETS[arch][a.field] for _, a in stores)
    # ... and the fields it fills are the ones ftrace_caller saves (markers such as cs = 0 aside)
    karch = truth_lab.karch
    assert set(karch.ftrace_regs_saved) <= {a.field for _, a in stores}
    # each saved register's value is the true register at the site, read by the verified run
    truth = {k.field: k.truth for k in c.verification.checks}
    for _, a in stores:
        if a.field in karch.ftrace_regs_saved:
            assert a.value == truth[a.field], a.field


@pytest.mark.parametrize("arch", ARCHES)
def test_the_walk_is_every_lab_instruction_the_per_instruction_count_saw(arch):
    """count_lab_code (a block hook, per block) and step (a code hook, per instruction) agree on
    how many of the lab's kernel-code instructions one hit ran; the lab's plumbing stubs, which
    the cost leaves out, are the difference."""
    lab = Lab.open("funcs", arch)
    c = capture(Lab.open("funcs", arch), "ftrace_caller", FUNC, CALL)
    hit = record(lab, "ftrace_caller", FUNC, None, CALL)
    assert c.events and c.insns == int(c.insns)  # every hit alike
    steps = [s for s in hit.recorder.walks[0].steps if s.phase != "site"]
    plumbing = _plumbing_steps(lab, steps)
    assert len(steps) - plumbing == c.insns


def _plumbing_steps(lab, steps):
    """Instructions in the blocks starting at the machine's plumbing stubs (to their first branch)."""
    n, inside = 0, False
    for s in steps:
        if s.addr in lab.machine._plumbing:
            inside = True
        if inside:
            n += 1
            if s.insn.split()[0] in ("jmp", "b", "ret"):
                inside = False
    return n


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("mechanism", list(STEP_MECHANISMS))
def test_every_mechanism_walks_from_the_site_and_back(arch, mechanism):
    lab = Lab.open("funcs", arch)
    site = lab.ftrace.site(FUNC)
    if mechanism == "ftrace_regs_caller" and lab.karch.regs_caller is None:
        with pytest.raises(Exception, match="no ftrace_regs_caller"):
            record(lab, mechanism, FUNC, None, CALL)
        return
    hit = record(lab, mechanism, FUNC, None, CALL)
    walks = hit.recorder.walks
    assert [w.kind for w in walks] == (["entry", "return"] if mechanism in RETURNS else ["entry"])
    entry = walks[0]
    first = entry.steps[0]
    if mechanism == "kprobe":  # the breakpoint on the instruction after the site
        assert first.addr == site.ip + site.encoding.size and first.phase == "site"
    else:  # the site's first byte; back at the instruction after it
        assert first.addr == site.addr and entry.landing == site.ip + site.encoding.size
    assert {"save registers", "call handler"} <= {s.phase for s in entry.steps}
    # what the trampoline saves goes into the snapshot it hands on
    saves = [a for s in entry.steps if s.phase == "save registers" for a in s.stores]
    assert saves and all(a.struct in ("ftrace_regs", "pt_regs") for a in saves if a.struct != "frame record")
    if mechanism in RETURNS:  # back in chain_b, right after its call of chain_c
        ret = walks[1]
        chain_b = lab.machine.symbols.get("chain_b")
        assert chain_b.addr < ret.landing < chain_b.addr + chain_b.size
        assert ret.steps[0].phase != "site"


@pytest.mark.parametrize("arch", ARCHES)
def test_function_graph_pushes_the_shadow_stack_frame_and_hooks_the_return(arch):
    lab = Lab.open("funcs", arch)
    hit = record(lab, "function_graph", FUNC, None, CALL)
    frame = {a.field: a.value for _, a in stores_of(hit, "ftrace_ret_stack")}
    site = hit.recorder.walks[0].steps[0]
    regs = hit.recorder.regs
    # the true return address at the site: the link register, or the word at sp for a call
    m = lab.machine
    lr = m.arch.lr
    parent = site.before[regs.index(lr)] if lr else None
    assert frame["func"] == lab.ftrace.site(FUNC).ip  # rec->ip: the site's, as ftrace_caller passes it
    if parent is not None:
        assert frame["ret"] == parent
    chain_b = m.symbols.get("chain_b")
    assert chain_b.addr < frame["ret"] < chain_b.addr + chain_b.size
    records = {a.struct for _, a in stores_of(hit, "ftrace_graph_ent_entry")} | {
        a.struct for _, a in stores_of(hit, "ftrace_graph_ret_entry")
    }
    assert records == {"ftrace_graph_ent_entry", "ftrace_graph_ret_entry"}
    # the exit record's retval is what chain_c returned (chain_a(3) = 22, chain_c(7) = 22 - ...)
    ret_walk = hit.recorder.walks[1]
    assert ret_walk.landing == frame["ret"]


@pytest.mark.parametrize("arch", ARCHES)
def test_a_kprobe_inside_the_function(arch):
    lab = Lab.open("funcs", arch)
    sym = lab.machine.symbols.get(FUNC)
    site = lab.ftrace.site(FUNC)
    after = site.ip + site.encoding.size  # the instruction after the site, then the one after that
    off = after + decode(lab.arch, lab.machine.read(after, 16), after).size - sym.addr
    hit = record(lab, "kprobe", FUNC, off, CALL)
    steps = hit.recorder.walks[0].steps
    assert steps[0].addr == sym.addr + off
    assert stores_of(hit, "pt_regs")
    # the breakpoint, the exception, the copied instruction in its slot, the slot's breakpoint and
    # its exception, then back after the probed instruction
    phases = [phase for phase, _ in itertools.groupby(s.phase for s in steps)]
    assert phases.count("call handler") == 2 and "single-step" in phases
    assert (
        hit.recorder.walks[0].landing == sym.addr + off + decode(lab.arch, lab.machine.read(sym.addr + off, 16), 0).size
    )


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return out, err, code


def test_cli_json_and_errors(capsys):
    doc = json.loads(ftlab(capsys, "step", "--arch", "x86_64", "funcs", "chain_a(3)", "--at", FUNC, "--format", "json"))
    step = doc["walks"][0]["steps"][0]
    assert set(step) >= {"insn", "addr", "sym", "regs", "stores", "phase"}
    named = [s for st in doc["walks"][0]["steps"] for s in st["stores"] if s["struct"] == "ftrace_regs"]
    assert {s["field"] for s in named} >= {"di", "ip", "sp"}
    _, err, code = run_cli(
        capsys, "step", "--arch", "all", "funcs", "chain_a(3)", "--at", FUNC, "--beside", "funcs-mcount"
    )
    assert code == 1 and err.count("\n") == 1 and "--beside" in err
    _, err, code = run_cli(capsys, "step", "--arch", "x86_64", "funcs", "chain_a(3)", "--at", "fib")
    assert code == 1 and "never reached fib" in err
    _, err, code = run_cli(capsys, "step", "--arch", "x86_64", "funcs", "chain_a(3)", "--at", "chain_c+0x6")
    assert code == 1 and "--mechanism kprobe" in err


def test_the_report_shows_the_walk_of_each_arch(tmp_path, capsys):
    """`ftlab report`'s step section: a row per instruction of each arch's walk, in order."""
    page = tmp_path / "r.html"
    ftlab(capsys, "report", "funcs", "chain_a(3)", "--at", FUNC, "-o", str(page))
    tables = page.read_text().split("<table class='step'>")[1:]
    assert len(tables) == len(ARCHES)
    for arch, table in zip(ARCHES, tables, strict=True):
        steps = record(Lab.open("funcs", arch), "ftrace_caller", FUNC, None, CALL).recorder.walks[0].steps
        rows = table.split("</table>")[0].split("<tr>")[2:]  # after the heading row
        assert [r.split("<code>")[2].split("</code>")[0] for r in rows] == [
            s.insn.replace("<", "&lt;").replace(">", "&gt;") for s in steps
        ]
