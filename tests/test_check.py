"""`ftlab check`: the verdict passes where the lab is right, and fails, one line naming function,
mechanism, field and PC, where an object or a mechanism is wrong. The references: the catalog's
call counts and results, capstone's decoding of each function, the calls' own arguments."""

import json
import pickle
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from emulator.asm import disassemble
from fixtures import ASM_DIR, OBJ_DIR, bundled, bundled_names, catalog
from helpers import ARCHES
from tracers import Lab
from tracers.arch import kernel_arch
from tracers.builtin.function import FunctionTracer
from tracers.cli.main import main
from tracers.conformance import check_object, check_path
from tracers.conformance.calls import read_calls_file
from tracers.core.kprobes import Kprobes
from tracers.core.regs import FtraceRegs
from tracers.lab import Target, resolve

CALLS = Path(__file__).resolve().parent.parent / "fixtures" / "calls"
MECHANISMS = ["function", "function_graph", "fprobe(fgraph)", "kretprobe", "kprobe"]


def target(arch: str, name: str) -> Target:
    [t] = resolve(name, arch)
    return t


def rows(report) -> dict:
    return {(r.function, r.mechanism): r for r in report.rows}


def test_dwarf_calls_pass_and_probe_every_instruction(arch):
    """Calls made up from funcs-g's DWARF: every function under every mechanism; each kprobe row
    covers the instructions capstone finds in the function, the refused ones with a reason."""
    report = check_object(target(arch, "funcs-g"))
    assert report.ok, report.failures
    assert report.mechanisms == MECHANISMS
    lab = Lab.open("funcs-g", arch)
    names = {s.name for s in lab.obj.functions}
    assert {r.function for r in report.rows} == names
    assert all(r.status == "ok" for r in report.rows), [r for r in report.rows if r.status != "ok"]
    for func in names:
        sym = lab.machine.symbols.get(func)
        insns = len(disassemble(lab.arch, lab.machine.read(sym.addr, sym.size), sym.addr))
        row = rows(report)[func, "kprobe"]
        probed, total = map(int, row.detail.split(" ", 1)[0].split("/"))
        assert total == insns and total - probed == len(row.refused)
        # another probe's breakpoint never hides an instruction boundary (can_probe's recovery)
        assert not any("instruction boundary" in why for why in row.refused), row.refused


def test_counts_match_the_catalog(arch):
    """fib(10) enters fib 177 times: one snapshot per entry for the function tracer, two per
    call for the mechanisms that see the exit too; the result is the catalog's."""
    entries = catalog.FUNCTIONS["fib"].calls(10)["fib"]
    report = check_object(target(arch, "funcs"), calls=["fib(10)"])
    assert report.ok, report.failures
    got = rows(report)
    assert got["fib", "function"].detail == f"1 call lines, {entries} snapshots"
    for mech in ("function_graph", "fprobe(fgraph)", "kretprobe"):
        assert got["fib", mech].detail == f"1 call lines, {2 * entries} snapshots"
    assert all(
        r.status == "n/a" and r.detail == "no line of --calls calls it" for r in report.rows if r.function != "fib"
    )


def test_state_carries_from_line_to_line(arch):
    """A context in a named buffer across a sequence: both functions of a line are checked, each
    run of the line the same traced as untraced."""
    lines = read_calls_file(CALLS / "state.calls")
    report = check_object(target(arch, "state"), calls=lines)
    assert report.ok, report.failures
    assert {r.function for r in report.rows if r.status == "ok"} == {
        "arc4_setkey", "arc4_crypt", "adler_init", "adler_update", "adler_final", "crc_itu_t"
    }  # fmt: skip


def _broken_site_copy(arch: str, tmp_path: Path) -> tuple[Path, str]:
    """funcs.o with fib's patch site overwritten by zeroes in the file: the site table still
    records it, but it is neither the compiled call nor a NOP."""
    lab = Lab.open("funcs", arch)
    site = lab.ftrace.site("fib")
    src = bundled(arch, "funcs")
    data = bytearray(src.read_bytes())
    with open(src, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        [(base, _)] = lab.obj.sections[".text"]
        offset = text["sh_offset"] + site.ip - base
    data[offset : offset + site.encoding.size] = bytes(site.encoding.size)
    out = tmp_path / "funcs-broken.o"
    out.write_bytes(bytes(data))
    return out, f"{site.ip - lab.machine.address_of('fib'):#x}"


def test_a_site_the_lab_cannot_handle_is_one_failure_line(arch, tmp_path, capsys):
    path, off = _broken_site_copy(arch, tmp_path)
    where = "fib" if off == "0x0" else f"fib\\+{off}"
    report = check_object(Target(path, kernel_arch_of(arch)))
    assert not report.ok and report.rows == []
    [line] = report.failures
    assert re.fullmatch(
        rf"FAIL funcs-broken\.o: {re.escape(str(path))}: unrecognised .* patch site at 0x[0-9a-f]+ <{where}>: .*", line
    ), line
    code = main(["check", str(path), "--calls", str(CALLS / "funcs.calls")])
    out, err = capsys.readouterr()
    assert code == 1 and line in out.splitlines()
    assert err == "ftlab: error: check: 1 failures in funcs-broken.o (" + arch + ")\n"


def kernel_arch_of(arch: str):
    return Lab.open("funcs", arch).arch


def test_a_wrong_snapshot_decode_names_function_mechanism_field_and_pc(arch, monkeypatch):
    """ftrace_regs decoded one too high in the first argument's member: every mechanism whose
    snapshot is an ftrace_regs fails on it, at the site; the kprobe's pt_regs stay right."""
    reg = Lab.open("funcs", arch).arch.arg_regs[0]
    fields = FtraceRegs.fields.fget

    def wrong(self):
        out = dict(fields(self))
        if reg in out:  # a return's ftrace_regs holds no arguments
            out[reg] += 1
        return out

    monkeypatch.setattr(FtraceRegs, "fields", property(wrong))
    report = check_object(target(arch, "funcs"), calls=["add3(1, 2, 3)"])
    site = Lab.open("funcs", arch).ftrace.site("add3")
    off = site.ip - site.func.addr
    at = f"at {site.ip:#x} <add3{f'+{off:#x}' if off else ''}>: "
    for mech in ("function", "function_graph"):
        assert rows(report)["add3", mech].status == "FAIL"
        assert any(f.startswith(f"FAIL add3 {mech}: entry {reg} saved 0x2 true 0x1 {at}") for f in report.failures), (
            report.failures
        )
    assert rows(report)["add3", "kprobe"].status == "ok"
    main_line = report.summary()
    assert main_line.startswith(f"FAIL funcs.o {arch}: ")


def test_a_wrong_kprobe_simulation_fails_the_result(arch, monkeypatch):
    """A `ret` simulated one too high in the return register: add3(1, 2, 3) gives 7, not 6, under
    the kprobes alone."""
    ops = kernel_arch(kernel_arch_of(arch)).kprobes
    simulate = ops.simulate
    ret = kernel_arch_of(arch).ret_regs[0]

    def wrong(insn, regs, machine):
        simulate(insn, regs, machine)
        if insn.mnemonic == "ret":
            regs.set_reg(ret, regs.reg(ret) + 1)

    monkeypatch.setattr(ops, "simulate", wrong)
    report = check_object(target(arch, "funcs"), calls=["add3(1, 2, 3)"])
    assert [r.mechanism for r in report.rows if r.status == "FAIL"] == ["kprobe"]
    entry = Lab.open("funcs", arch).machine.address_of("add3")
    assert any(
        f.startswith(f"FAIL add3 kprobe: result of add3(1, 2, 3) is 7, untraced 6 at {entry:#x} <add3>: ")
        for f in report.failures
    ), report.failures


def test_json_and_a_process_pool_can_carry_the_report(arch, capsys):
    task = pickle.dumps((str(bundled(arch, "funcs")), arch, {"calls": ["divmod(-47, 5)"]}))
    path, name, options = pickle.loads(task)
    report = pickle.loads(pickle.dumps(check_path(path, name, **options)))
    assert report.ok and report.to_json()["ok"]
    assert main(["check", "funcs", "--arch", arch, "--calls", str(CALLS / "funcs.calls"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["arch"] == arch and data["failures"] == []
    assert {r["mechanism"] for r in data["rows"]} == set(MECHANISMS)


def test_user_errors_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.calls"
    bad.write_text("fib(1)\nfib(\n")
    assert main(["check", "funcs", "--arch", "x86_64", "--calls", str(bad)]) == 1
    out, _ = capsys.readouterr()
    assert "FAIL funcs.o: call line 2 (fib(): malformed CALL" in out
    with pytest.raises(SystemExit):  # argparse's refusal, exit 2
        main(["check", "funcs", "--arch", "x86_64", "--trampoline", "ftrace_caller"])
    assert "'ftrace_caller' is not NAME=FILE.S" in capsys.readouterr().err


ROOT = Path(__file__).resolve().parent.parent
FUNCS_CALLS = ROOT / "fixtures/calls/funcs.calls"

# What `check` names for each shipped broken trampoline (fixtures/trampolines/ARCH/DEFECT.S): the
# first failure line of the function tracer's row, on add3.
BROKEN = {
    "clobber": r"FAIL add3 function: add3\(1, 2, 3\) fails traced, not untraced: ftrace_caller \(.*clobber\.S\): "
    r"returns to the instruction after the site with \w+ 0x[0-9a-f]+ \(at the site 0x[0-9a-f]+\)",
    "wrong_offset": r"FAIL add3 function: entry (di|x0) saved 0x[0-9a-f]+ true 0x1 at 0x[0-9a-f]+ <add3",
    "misaligned": r"FAIL add3 function: add3\(1, 2, 3\) fails traced, not untraced: ftrace_caller "
    r"\(.*misaligned\.S\): calls ftrace_ops_list_func with sp 0x[0-9a-f]+, not (8|16)-byte aligned",
    "wrong_return": r"FAIL add3 function: add3\(1, 2, 3\) fails traced, not untraced: ftrace_caller "
    r"\(.*wrong_return\.S\): returns to 0x[0-9a-f]+ <\w+>: .*, not to the instruction after the site",
}


@pytest.mark.parametrize("defect", sorted(BROKEN))
def test_each_broken_trampoline_fails_check_naming_it(capsys, arch, defect):
    """A correct copy passes (test_a_copy...), each broken one fails with its defect named."""
    broken = ROOT / "fixtures/trampolines" / arch / f"{defect}.S"
    code = main(
        ["check", "funcs", "--arch", arch, "--calls", str(FUNCS_CALLS), "--trampoline", f"ftrace_caller={broken}"]
    )
    out, err = capsys.readouterr()
    assert code == 1 and err.startswith("ftlab: error: check: ")
    first = next(line for line in out.splitlines() if line.startswith("FAIL add3 function:"))
    assert re.match(BROKEN[defect], first), first


def test_a_copy_of_the_labs_own_trampoline_passes_check(capsys, arch):
    own = ROOT / "tracers/arch" / arch / "ftrace_caller.S"
    code = main(["check", "funcs", "--arch", arch, "--calls", str(FUNCS_CALLS), "--trampoline", f"ftrace_caller={own}"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.splitlines()[-1].startswith(f"PASS funcs.o {arch}: 60 ok, 0 n/a, 0 FAIL"), out


def _calls_for(path: Path) -> tuple[list[str], list[str]]:
    """The calls file and the stubs of a committed fixture."""
    stem = path.stem.split("-")[0]
    name = f"insns-{path.parent.name}" if path.suffix == ".S" else stem
    stubs = ["helper", "jiffies_like=data"] if stem == "imports" else []
    return read_calls_file(CALLS / f"{name}.calls"), stubs


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_every_committed_fixture_passes(arch):
    for name in bundled_names(arch):
        path = bundled(arch, name)
        assert path.parent in (OBJ_DIR / arch, ASM_DIR / arch)
        calls, stubs = _calls_for(path)
        report = check_object(Target(path, kernel_arch_of(arch)), calls=calls, stubs=stubs)
        assert report.ok, (name, report.failures)
        assert any(r.status == "ok" for r in report.rows), name


def test_fixture_calls_files_parse():
    for f in CALLS.glob("*.calls"):
        assert read_calls_file(f), f


def test_a_function_without_a_patch_site_gets_kprobes_alone(arch):
    """Debian's crc-itu-t.ko: crc_itu_t has no patch site (the module is built without them), so
    only the kprobes apply; its result is the CRC's check value (CRC-16/XMODEM of "123456789")."""
    path = OBJ_DIR.parent / "modules" / arch / "crc-itu-t.ko"
    if not path.is_file():
        pytest.skip(f"{path} is not downloaded: run `make modules`")
    report = check_object(resolve(str(path), arch)[0], calls=['crc_itu_t(0, b"123456789", 9):u16'])
    assert report.ok, report.failures
    got = {m: (r.status, r.detail) for (f, m), r in rows(report).items() if f == "crc_itu_t"}
    assert got.pop("kprobe")[0] == "ok"
    assert {status for status, _ in got.values()} == {"n/a"}
    assert all(detail.startswith("no patch site") for _, detail in got.values())
    assert Lab(resolve(str(path), arch)[0]).run_calls('crc_itu_t(0, b"123456789", 9):u16').results[0].value == 0x31C3


def test_a_probe_left_armed_fails_text_and_state_and_the_next_function_starts_clean(arch, monkeypatch):
    """The kprobe on fib's last instruction is never unregistered: fib's text keeps its breakpoint
    and the point stays armed; add3, checked next on a fresh lab with the same history, is ok."""
    lab = Lab.open("funcs", arch)
    fib = lab.machine.symbols.get("fib")
    last = disassemble(lab.arch, lab.machine.read(fib.addr, fib.size), fib.addr)[-1][0]
    unregister = Kprobes.unregister

    def forgetful(self, p):
        if p.addr != last:
            unregister(self, p)

    monkeypatch.setattr(Kprobes, "unregister", forgetful)
    report = check_object(target(arch, "funcs"), calls=["fib(3)", "add3(1, 2, 3)"])
    status = {(f, m): r.status for (f, m), r in rows(report).items() if f in ("fib", "add3")}
    assert status.pop(("fib", "kprobe")) == "FAIL" and set(status.values()) == {"ok"}
    brk = kernel_arch(lab.arch).kprobes.BREAKPOINT
    text, left = report.failures
    assert text.startswith(f"FAIL fib kprobe: text {brk.hex(' ')}") and f"at {last:#x} <fib+" in text
    assert left == "FAIL fib kprobe: left behind after unregistering: 1 kprobe points still armed"


def test_a_lost_event_is_counted(arch, monkeypatch):
    """The function tracer drops its second event: fib(3) entered fib 5 times (the catalog)."""
    entries = catalog.FUNCTIONS["fib"].calls(3)["fib"]
    emit, seen = FunctionTracer.emit, []

    def lossy(self, event):
        seen.append(event)
        if len(seen) != 2:
            emit(self, event)

    monkeypatch.setattr(FunctionTracer, "emit", lossy)
    report = check_object(target(arch, "funcs"), calls=["fib(3)"])
    site = Lab.open("funcs", arch).ftrace.site("fib")
    [line] = report.failures
    assert line.startswith(
        f"FAIL fib function: entries {entries - 1}, the site ran {entries} times at {site.ip:#x} <fib"
    )
