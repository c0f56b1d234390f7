"""BPF programs on every attach route, on both arches: `ftlab bpf` runs the fixture programs of
fixtures/bpf/ over funcs.o, and what they leave (globals, maps, ring buffer records, bpf_printk
lines) equals what fixtures/bpf/expected.py computes in Python from the C; the traced functions'
results are unchanged, and the kernel releases with the arm64 bugs reproduce them."""

from __future__ import annotations

import json
import struct

import pytest

from fixtures import catalog
from fixtures.bpf import expected
from helpers import ftlab
from tracers.call_syntax import parse_calls
from tracers.cli.bpf_routes import route_captures
from tracers.cli.main import main
from tracers.kernel_version import KernelVersion
from tracers.lab import Lab

BPF = catalog.OBJ_DIR / "bpf"
# arm64 reaches a BPF trampoline only from CALL_OPS sites (-fpatchable-function-entry=4,2)
FUNCS = {"x86_64": "funcs", "arm64": "funcs-ops"}


def prog(arch: str, name: str) -> str:
    return str(BPF / arch / f"{name}.bpf.o")


def run_bpf(capsys, arch: str, obj: str, call: str, *options: str) -> tuple[dict, list[str]]:
    """The JSON summary record, and the bpf_printk texts, of `ftlab bpf`."""
    out = ftlab(capsys, "bpf", "--arch", arch, FUNCS[arch], call, "--prog", obj, "--format", "json", *options)
    records = [json.loads(line) for line in out.splitlines()]
    assert records[-1]["type"] == "summary"
    prints = [r["text"].removeprefix("bpf_trace_printk: ") for r in records[:-1] if r["type"] == "print"]
    return records[-1], prints


def results(capsys, arch: str, obj: str, call: str, *options: str) -> list[str]:
    """The `# CALL = RESULT` lines of the text output."""
    out = ftlab(capsys, "bpf", "--arch", arch, FUNCS[arch], call, "--prog", obj, *options)
    return [line[2:] for line in out.splitlines() if line.startswith("# ") and " = " in line]


def globals_of(summary: dict) -> dict:
    """Every global data map's variables, by name."""
    out: dict = {}
    for name, elements in summary["maps"].items():
        if name.endswith((".bss", ".data", ".rodata")):
            for element in elements:
                for section in element["value"].values():
                    for var in section:
                        out.update(var)
    return out


def map_of(summary: dict, name: str) -> dict:
    return {e["key"]: e["value"] for e in summary["maps"][name]}


def test_fentry_counters_in_array_hash_and_percpu_maps(capsys, arch):
    summary, _ = run_bpf(capsys, arch, prog(arch, "counters"), "chain_a(3); chain_a(9)")
    want = expected.counters("chain_a", 3)["maps"], expected.counters("chain_a", 9)["maps"]
    assert map_of(summary, "calls") == {0: want[0]["calls"][0] + want[1]["calls"][0], 1: 3 + 4 + 3 + 9 + 10 + 9 - 6}
    by_arg = dict(want[0]["by_arg"])
    for x, n in want[1]["by_arg"].items():
        by_arg[x] = by_arg.get(x, 0) + n
    assert map_of(summary, "by_arg") == by_arg
    assert [v["value"] for e in summary["maps"]["cpu_calls"] for v in e["values"]] == [4]


@pytest.mark.parametrize("n", [2, 6])
def test_fentry_globals_in_bss_data_rodata(capsys, arch, n):
    summary, _ = run_bpf(capsys, arch, prog(arch, "globals"), f"fib({n})")
    assert globals_of(summary) == expected.globals_("fib", n)["globals"]


def test_kprobe_arguments_func_ip_and_printk(capsys, arch):
    summary, prints = run_bpf(capsys, arch, prog(arch, "kprobe"), "add3(1, 2, 3); add3(-5, 10, 20)")
    want = expected.kprobe("add3", -5, 10, 20)
    got = globals_of(summary)
    assert {k: got[k] for k in want["globals"]} == want["globals"]
    assert got["last_ip"] == Lab.open(FUNCS[arch], arch).machine.symbols.get("add3").addr  # bpf_get_func_ip
    assert prints == expected.kprobe("add3", 1, 2, 3)["printk"] + want["printk"]


def test_kretprobe_return_values(capsys, arch):
    summary, _ = run_bpf(capsys, arch, prog(arch, "kretprobe"), "fib(6)")
    want = expected.kretprobe("fib", 6)
    assert globals_of(summary)["returned"] == want["globals"]["returned"]
    assert map_of(summary, "returns") == want["maps"]["returns"]


def test_multi_entries_and_ring_buffer_records(capsys, arch):
    summary, _ = run_bpf(capsys, arch, prog(arch, "multi"), "chain_a(7)")
    want = expected.multi("chain_a", 7)
    symbols = Lab.open(FUNCS[arch], arch).machine.symbols
    assert map_of(summary, "entries") == {symbols.get(f).addr: n for f, n in want["maps"]["entries"].items()}
    records = [struct.unpack("<Qq", bytes.fromhex(r)) for r in summary["maps"]["events"]]
    assert records == [(symbols.get(f).addr, ret) for f, ret in want["events"]]


def test_session_cookie_pairs_entry_and_exit(capsys, arch):
    summary, _ = run_bpf(capsys, arch, prog(arch, "session"), "fib(6)")
    want = expected.session("fib", 6)
    assert {k: v for k, v in globals_of(summary).items() if k in want["globals"]} == want["globals"]
    assert map_of(summary, "results") == want["maps"]["results"]


def test_session_needs_6_10(capsys, arch):
    code = main(["bpf", "--arch", arch, "--kernel", "6.9", FUNCS[arch], "fib(3)", "--prog", prog(arch, "session")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "kprobe.session programs came in 6.10, not Linux 6.9" in err


@pytest.mark.parametrize("name", ["override_kprobe", "override_multi"])
@pytest.mark.parametrize("kernel", ["6.19", "7.0"])
def test_bpf_override_return(capsys, arch, name, kernel):
    """From a kprobe, everywhere; from kprobe.multi, lost on arm64 before 7.0, whose partial
    pt_regs were a copy nothing wrote back (fixed by ftrace_partial_regs_update, 276f3b6daf60)."""
    got = results(
        capsys, arch, prog(arch, "override") + f":{name}", "mix_flags(99, 1); mix_flags(3, 2)", "--kernel", kernel
    )
    lost = name == "override_multi" and arch == "arm64" and kernel == "6.19"
    first = catalog.FUNCTIONS["mix_flags"].reference(99, 1) if lost else expected.override("mix_flags", 99, 1)["ret"]
    assert got[0].startswith(f"mix_flags(99, 1) = {first}")
    assert got[1].startswith(f"mix_flags(3, 2) = {expected.override('mix_flags', 3, 2)['ret']}")


@pytest.mark.parametrize("kernel", ["6.17", "7.0"])
def test_bpf_get_stackid_from_kprobe_multi(capsys, arch, kernel):
    """arm64's partial pt_regs had pstate 0 until 6.18 (fd2f74f8f3d3): user_mode() was true, so
    bpf_get_stackid() returned -EFAULT and bpf_get_stack() copied nothing; a kprobe's exception
    pt_regs was always fine, and so was x86."""
    summary, _ = run_bpf(capsys, arch, prog(arch, "stack"), "chain_a(3)", "--kernel", kernel)
    got = globals_of(summary)
    broken = arch == "arm64" and kernel == "6.17"
    assert (got["multi_stackid"] == -14) == broken
    assert got["multi_stack"] == (0 if broken else 16)
    assert got["kprobe_stackid"] >= 0 and got["kprobe_stack"] == 16
    symbols = Lab.open(FUNCS[arch], arch).machine.symbols
    if not broken:  # the stack of the last chain_c entry: chain_c itself, then (past chain_a, in lr) the caller
        assert symbols.lookup(got["frames"][0])[0].name == "chain_c"


@pytest.mark.parametrize("obj", ["kprobe", "kretprobe", "multi", "session", "counters", "subprog"])
@pytest.mark.parametrize("kernel", ["6.17", "7.0"])
def test_verify_the_pt_regs_each_program_gets(capsys, arch, obj, kernel):
    """Every run's ctx is checked against the true registers. The exception's pt_regs (kprobe,
    and kretprobe's trampoline) equal them in every field they capture; the partial pt_regs of
    the kprobe.multi routes differ exactly in what ftrace_partial_regs()'s fix-ups write, which
    is not the CPU's: x86's flags (6.18+), arm64's pstate = EL1h (6.18+)."""
    summary, _ = run_bpf(
        capsys, arch, prog(arch, obj), "add3(1, 2, 3); chain_a(4); fib(4)", "--verify", "--kernel", kernel
    )
    runs = sum(p["hits"] for p in summary["probes"].values())
    verify = summary["verify"]
    assert runs > 0 and verify["snapshots"] == runs
    lab = Lab.open(FUNCS[arch], arch, kernel=KernelVersion.parse(kernel))
    written = {f.member for f in lab.karch.partial_regs_of(lab.kernel).fixups} - {"cs"}
    partial = obj in ("multi", "session")
    assert verify["differing"] == (dict.fromkeys(written, runs) if partial else {})


def test_fexit_return_slot_and_probe_read(capsys, arch):
    summary, _ = run_bpf(capsys, arch, prog(arch, "tracing") + ":crc32_exit", 'crc32_bitwise(0, b"123456789", 9)')
    want = expected.tracing("crc32_bitwise", 0, b"123456789", 9)["globals"]
    got = globals_of(summary)
    assert {k: got[k] for k in want} == want
    assert want["crc_ret"] == 0xCBF43926  # CRC-32's check value: the function itself is right


def test_fentry_with_more_arguments_than_registers_is_refused(capsys, arch):
    argv = ["bpf", "--arch", arch, FUNCS[arch], "sum10(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)"]
    code = main([*argv, "--prog", prog(arch, "tracing") + ":sum10_entry"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "fentry/sum10: 10 arguments" in err


@pytest.mark.parametrize("a", [7, 3])
def test_fmod_ret_replaces_the_result_or_lets_the_function_run(capsys, arch, a):
    want = expected.modret("mix_flags", a, 2)
    got = results(capsys, arch, prog(arch, "modret"), f"mix_flags({a}, 2)")
    assert got[0].startswith(f"mix_flags({a}, 2) = {want['ret']}")


def test_subprograms_in_two_fentry_programs_and_an_fexit(capsys, arch):
    summary, _ = run_bpf(capsys, arch, prog(arch, "subprog"), "add3(1, 2, 3)")
    assert globals_of(summary) == expected.subprog("add3", 1, 2, 3)["globals"]


def test_arm64_fentry_needs_call_ops_sites(capsys):
    code = main(["bpf", "--arch", "arm64", "funcs", "fib(3)", "--prog", prog("arm64", "globals")])
    err = capsys.readouterr().err
    assert code == 1 and "only with DYNAMIC_FTRACE_WITH_CALL_OPS sites" in err and "(-ENOTSUPP)" in err


def test_attach_cookie(capsys, arch):
    summary, _ = run_bpf(capsys, arch, prog(arch, "multi"), "chain_a(3)", "--cookie", "multi_entry=0xfeedf00d12345678")
    assert globals_of(summary)["last_cookie"] == 0xFEEDF00D12345678


CALLS = 'fib(5); chain_a(6); add3(-1, 2, 300); mix_flags(3, 9); crc32_bitwise(0, b"abc", 3)'


@pytest.mark.parametrize(
    "obj", ["counters", "globals", "kprobe", "kretprobe", "multi", "session", "stack", "subprog", "tracing:crc32_exit"]
)
def test_traced_results_are_unchanged(capsys, arch, obj):
    """Every program that only watches leaves each call's result as catalog's reference says."""
    name, _, progs = obj.partition(":")
    got = results(capsys, arch, prog(arch, name) + (f":{progs}" if progs else ""), CALLS)
    want = [
        catalog.FUNCTIONS["fib"].reference(5),
        catalog.FUNCTIONS["chain_a"].reference(6),
        catalog.FUNCTIONS["add3"].reference(-1, 2, 300),
        catalog.FUNCTIONS["mix_flags"].reference(3, 9),
        catalog.FUNCTIONS["crc32_bitwise"].reference(0, b"abc", 3),
    ]
    assert [line.split(" = ")[1].split(" ")[0] for line in got] == [str(v) for v in want]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_no_bpf_trampoline_at_an_mcount_site(arch):
    """Direct calls (5.5) reach a site at the function's entry only: at a -pg site after the
    prologue, fentry and fexit are refused (they once ran there and faulted), the kprobe routes work."""
    lab = Lab.open("funcs-mcount", arch)
    rows = {c.mechanism: c for c in route_captures(lab, "chain_c", parse_calls("chain_a(3)"))}
    for route in ("bpf:fentry", "bpf:fexit"):
        assert "after the prologue" in rows[route].refused
    assert rows["bpf:kprobe.multi"].refused is None and rows["bpf:kprobe.multi"].events
