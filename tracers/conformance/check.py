"""check_object: run every call line untraced, then under each mechanism, and compare.

The calls run in one order on every lab (the untraced one and one per mechanism), each line once
per function of the object it calls, so that functions keeping state in the object's data (a
counter, a context) see the same history traced as untraced. A mechanism's lab is reused from
function to function while unregistering leaves it as after init (text and state checked after each
line); when it does not, that is a failure, and a fresh lab replays the calls so far untraced."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from emulator import FtlabError
from emulator import arch as arches
from emulator.machine import DEFAULT_BUDGET

from ..call_results import CallsOutcome, format_result
from ..call_syntax import CallSequence, parse_calls
from ..kernel_version import MODELLED
from ..lab import Lab, Target
from .calls import called_functions, plan
from .report import ObjectReport, Row
from .runners import Runner, Seen, runners
from .state import left_behind, text_changes, text_of


@dataclass(frozen=True)
class Item:
    """One line's calls, run to check one function."""

    seq: CallSequence
    func: str


@dataclass
class Truth:
    """The untraced run of an item: its outcome (or error), and how often each instruction of the
    function ran (a code hook on the bare machine)."""

    outcome: CallsOutcome | None
    error: str | None
    ran: Counter


@dataclass
class Tally:
    """One function under one mechanism, over its items."""

    calls: int = 0
    snaps: int = 0
    na: str | None = None
    failures: list[str] = field(default_factory=list)
    probed: str = ""  # kprobe: 'N/M'
    refused: tuple[str, ...] = ()


def check_object(
    target,
    *,
    calls: list[str] | None = None,
    kernel=MODELLED,
    loads=(),
    stubs=(),
    trampolines=None,
    budget: int = DEFAULT_BUDGET,
) -> ObjectReport:
    """The verdict on one object (a tracers.lab.Target) on its arch. `calls`: CALL lines, or None
    for calls made up from the object's DWARF. An object the lab cannot load or initialise is one
    failure line, the lab's own error."""
    start = time.perf_counter()
    report = ObjectReport(str(target.path), target.arch.name, str(kernel))

    def new_lab() -> Lab:
        extra = {} if trampolines is None else {"trampolines": trampolines}
        return Lab(target, stubs=stubs, budget=budget, kernel=kernel, loads=loads, **extra)

    try:
        _check(report, new_lab, calls)
    except FtlabError as err:
        report.failures.append(f"FAIL {report.name}: {err}")
    report.seconds = time.perf_counter() - start
    return report


def check_path(path: str, arch: str, **options) -> ObjectReport:
    """check_object for an object named by its path and arch name: plain arguments, for a
    process pool's tasks (an Arch does not pickle)."""
    if options.get("trampolines"):
        options["trampolines"] = {name: Path(file) for name, file in options["trampolines"].items()}
    return check_object(Target(Path(path), arches.get(arch)), **options)


def _check(report: ObjectReport, new_lab, lines: list[str] | None) -> None:
    bare = new_lab()
    functions = [s.name for s in bare.obj.functions]
    seqs = {}
    for n, line in enumerate(lines or (), 1):
        try:
            seqs[line] = parse_calls(line)
            bare.check_calls(seqs[line])
        except FtlabError as err:
            raise FtlabError(f"call line {n} ({line}): {err}") from None
    todo = plan(functions, bare.calls.btf, lines)
    items = []
    for line in todo.lines:
        seq = seqs.get(line) or parse_calls(line)
        items += [Item(seq, func) for func in called_functions(seq, set(functions))]
    report.calls = len(todo.lines)
    truths = [_untraced(bare, item) for item in items]
    mechanisms = runners(bare)
    report.mechanisms = [r.name for r in mechanisms]
    tallies: dict[tuple[str, str], Tally] = {}
    for runner in mechanisms:
        _run_mechanism(runner, new_lab, items, truths, tallies)
    for func in functions:
        for runner in mechanisms:
            if func in todo.no_call:
                report.rows.append(Row(func, runner.name, "n/a", todo.no_call[func]))
                continue
            t = tallies.get((func, runner.name))
            if t is not None:
                report.rows.append(_row(func, runner, t))
                report.failures += list(dict.fromkeys(t.failures))


def _row(func: str, runner: Runner, t: Tally) -> Row:
    if t.failures:
        return Row(func, runner.name, "FAIL", f"{len(set(t.failures))} failures", t.refused)
    if not t.calls:
        return Row(func, runner.name, "n/a", t.na or "not run", t.refused)
    probed = f"{t.probed} insns, " if t.probed else ""
    return Row(func, runner.name, "ok", f"{probed}{t.calls} call lines, {t.snaps} snapshots", t.refused)


def _untraced(lab: Lab, item: Item) -> Truth:
    m = lab.machine
    sym = next(s for s in lab.obj.functions if s.name == item.func)
    begin = min([sym.addr, *(s.addr for s in lab.sites if s.func is sym)])
    ran: Counter = Counter()

    def count(addr: int) -> None:
        ran[addr] += 1

    hook = m.hook_code(count, begin, sym.addr + sym.size - 1)
    try:
        return Truth(lab.run_calls(item.seq), None, ran)
    except FtlabError as err:
        return Truth(None, str(err), ran)
    finally:
        m.unhook(hook)


def _run_quietly(lab: Lab, seq: CallSequence) -> None:
    """A line run for its effect on the object's data alone (an error was the untraced run's too)."""
    try:
        lab.run_calls(seq)
    except FtlabError:
        pass


def _run_mechanism(runner: Runner, new_lab, items: list[Item], truths: list[Truth], tallies) -> None:
    lab = new_lab()
    after_init = text_of(lab)
    traceable = {s.func.name for s in lab.sites}
    for i, (item, truth) in enumerate(zip(items, truths, strict=True)):
        t = tallies.setdefault((item.func, runner.name), Tally())
        if truth.error is not None:
            t.na = t.na or f"the untraced call fails: {item.seq.text}: {truth.error}"
            _run_quietly(lab, item.seq)
            continue
        if runner.needs_site and item.func not in traceable:
            t.na = f"no patch site: {lab.no_sites()}" if not lab.sites else "no patch site (notrace, or inlined)"
            _run_quietly(lab, item.seq)
            continue
        fail = _Failures(lab, item.func, runner.name, t.failures)
        seen = Seen()
        with lab.verify.holding(*runner.owners(lab)):
            try:
                detach = runner.attach(lab, item.func, seen, _most(lab, item.func, truth))
            except FtlabError as err:  # refused by the kernel's rules
                t.na = str(err)
                _run_quietly(lab, item.seq)
                continue
            try:
                outcome = lab.run_calls(item.seq)
            except FtlabError as err:
                outcome = None
                fail.add(f"{item.seq.text} fails traced, not untraced: {err}")
            finally:
                detach()
        t.calls += 1
        t.snaps += len(seen.snaps)
        if outcome is not None:
            _compare_outcome(fail, truth.outcome, outcome)
        _compare_snaps(fail, seen)
        _compare_counts(fail, runner, seen, truth, lab)
        if seen.refused or seen.hits:
            t.probed = f"{len(seen.hits)}/{len(seen.hits) + len(seen.refused)}"
            t.refused = tuple(f"{lab.machine.symbols.name(a)}: {why}" for a, why in sorted(seen.refused.items()))
        dirty = _compare_state(fail, lab, after_init)
        if dirty:  # carry on from a clean lab with the same history
            lab = new_lab()
            for earlier in items[: i + 1]:
                _run_quietly(lab, earlier.seq)


def _most(lab: Lab, func: str, truth: Truth) -> int:
    """How many calls of func may be in flight at once, at most: its entries in the untraced run
    (a kretprobe's or rethook fprobe's pool this big misses none)."""
    site = next((s for s in lab.sites if s.func.name == func), None)
    return truth.ran[site.ip] if site is not None else 0


class _Failures:
    """Failure lines for one function under one mechanism: `FAIL fib kprobe: what at PC`."""

    def __init__(self, lab: Lab, func: str, mechanism: str, out: list[str]):
        self.m, self.func, self.mechanism, self.out = lab.machine, func, mechanism, out

    def add(self, what: str, pc: int | None = None) -> None:
        at = "" if pc is None else f" at {self.m.where(pc)}"
        self.out.append(f"FAIL {self.func} {self.mechanism}: {what}{at}")


def _compare_outcome(fail: _Failures, untraced: CallsOutcome | None, traced: CallsOutcome) -> None:
    assert untraced is not None
    entry = fail.m.address_of(fail.func)
    for u, r in zip(untraced.results, traced.results, strict=True):
        if u.value != r.value:
            fail.add(
                f"result of {r.call} is {format_result(r.value, r.type)}, untraced {format_result(u.value, u.type)}",
                entry,
            )
    for name, data in traced.buffers.items():
        was = untraced.buffers[name]
        if data != was:
            off = next(i for i in range(len(data)) if data[i] != was[i])
            fail.add(f"buffer {name}[{off}] is {data[off]:#04x}, untraced {was[off]:#04x}", entry)


def _compare_snaps(fail: _Failures, seen: Seen) -> None:
    for snap in seen.snaps:
        if snap.verification is None:
            fail.add(f"{snap.when} snapshot without the true registers to check it against", snap.pc)
            continue
        for c in snap.verification.checks:
            if not c.equal:
                fail.add(f"{snap.when} {c.field} saved {c.captured:#x} true {c.truth:#x}", snap.pc)


def _compare_counts(fail: _Failures, runner: Runner, seen: Seen, truth: Truth, lab: Lab) -> None:
    if seen.missed:
        fail.add(f"{seen.missed} events missed (nmissed)")
    if runner.counts_exits is None:  # kprobe: each instruction's hits
        for addr, hits in sorted(seen.hits.items()):
            if hits != truth.ran[addr]:
                fail.add(f"hits {hits}, the instruction ran {_times(truth.ran[addr])}", addr)
        return
    site = lab.ftrace.site(fail.func)
    ran = truth.ran[site.ip]
    if seen.entries != ran:
        fail.add(f"entries {seen.entries}, the site ran {_times(ran)}", site.ip)
    if runner.counts_exits and seen.exits != ran:
        fail.add(f"exits {seen.exits}, the site ran {_times(ran)}", site.ip)


def _compare_state(fail: _Failures, lab: Lab, after_init: dict[int, bytes]) -> bool:
    changed = text_changes(lab, after_init)
    for addr, was, now in changed:
        fail.add(f"text {now.hex(' ')} after unregistering, {was.hex(' ')} after init", addr)
    left = left_behind(lab)
    for what in left:
        fail.add(f"left behind after unregistering: {what}")
    return bool(changed or left)


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"
