"""`ftlab regs` / `ftlab compare`, and the talk's claim as a measured fact."""

import json

import pytest

from tracers.call_syntax import parse_calls
from tracers.cli.bpf_routes import PROPOSAL, ROUTES
from tracers.cli.main import main
from tracers.cli.mechanisms import MECHANISMS, capture_all

CALL = parse_calls("chain_a(10)")


def test_ftrace_regs_is_cheaper_than_any_pt_regs(lab):
    """On each arch, saving ftrace_regs costs fewer emulated instructions and fewer stored bytes
    than saving a pt_regs, counted exactly in the lab's code."""
    got = {c.mechanism: c for c in capture_all(lab, "chain_c", CALL)}
    fregs = got["ftrace_caller"]
    assert fregs.events == 2 and fregs.insns > 0 and fregs.stored > 0
    pt_regs = [c for c in got.values() if c.kind == "pt_regs" and c.mechanism != "partial_regs"]
    assert {c.mechanism for c in pt_regs} >= {"kprobe", "rethook"}
    for c in pt_regs:
        assert fregs.insns < c.insns and fregs.stored < c.stored, c.mechanism


def test_every_mechanism_against_the_truth(lab):
    got = {c.mechanism: c for c in capture_all(lab, "chain_c", CALL)}
    assert set(got) == set(MECHANISMS)
    for c in got.values():
        if c.mechanism == "ftrace_regs_caller" and lab.arch.name == "arm64":
            assert "PSTATE cannot be saved without taking an exception" in c.refused
            continue
        # ftrace_partial_regs() (6.18+) writes a mode member that is partly true: arm64 pstate =
        # PSR_MODE_EL1h only, x86 flags only X86_EFLAGS_FIXED (the rest is stack garbage)
        partial = {"x86_64": ["flags"], "arm64": ["pstate"]}[lab.arch.name] if c.mechanism == "partial_regs" else []
        assert c.mismatch == partial, c.mechanism  # arm64's kretprobe: BRK #7's exception pt_regs (6.9+)
    assert got["kprobe"].missing == (["orig_ax"] if lab.arch.name == "x86_64" else [])


def _third_instruction(lab, func="fib"):
    from emulator.asm import disassemble

    sym = lab.machine.symbols.get(func)
    return disassemble(lab.arch, lab.machine.read(sym.addr, sym.size), sym.addr)[3][0] - sym.addr


def test_kprobe_mid_function(lab):
    off = _third_instruction(lab)
    [c] = capture_all(lab, "fib", parse_calls("fib(4)"), off)
    assert (c.mechanism, c.at, c.kind, c.mismatch) == ("kprobe", f"fib+{off:#x}", "pt_regs", [])


def test_regs_command_text_and_json(capsys, arch, lab):
    assert main(["regs", "--arch", arch, "funcs", "chain_a(10)", "--at", "chain_c"]) == 0
    out = capsys.readouterr().out
    assert out.count("== ") == len(MECHANISMS) + len(ROUTES) + 1  # and the BPF routes, the proposal last
    assert "by the kernel's definition of the field" in out and "saved bits:" in out
    at = f"fib+{_third_instruction(lab):#x}"
    assert main(["regs", "--arch", arch, "funcs", "fib(3)", "--at", at, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [row] = report["mechanisms"]
    flags = {"x86_64": "flags", "arm64": "pstate"}[arch]
    assert row["fields"][flags]["equal"] and "saved_bits" in row["fields"][flags]


def test_compare_command(capsys):
    assert main(["compare", "funcs", "chain_a(10)", "--at", "chain_c"]) == 0
    out = capsys.readouterr().out
    assert "x86_64" in out.splitlines()[2] and "arm64" in out.splitlines()[2]
    assert "kprobe armed   at chain_c+0x5: cc  int3" in out
    assert out.count("cost/event") == len(MECHANISMS)
    assert main(["compare", "funcs", "fib(2)", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    mechanisms = [*MECHANISMS, *(f"bpf:{r}" for r in (*ROUTES, PROPOSAL))]
    assert {(r["arch"], r["mechanism"]) for r in rows} == {(a, m) for a in ("x86_64", "arm64") for m in mechanisms}
    bpf = {(r["arch"], r["mechanism"]): r for r in rows if r["mechanism"].startswith("bpf:")}
    # arm64's trampoline needs CALL_OPS sites, which funcs (=2) does not have
    assert [a for (a, m), r in bpf.items() if r["refused"]] == ["arm64", "arm64"]
    assert all(r["bpf_insns_per_event"] == 2 for r in bpf.values() if not r["refused"])


@pytest.mark.parametrize(
    "at,message",
    [
        ("nosuch", "no function 'nosuch'"),
        ("fib+zz", "'zz' is not an offset"),
        ("fib+0x1", "Probe point is not an instruction boundary"),
    ],
)
def test_bad_at(capsys, at, message):
    assert main(["regs", "--arch", "arm64", "funcs", "fib(3)", "--at", at]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
