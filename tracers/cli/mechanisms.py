"""Every mechanism's snapshot of the same moment, side by side, with what it costs.

For one function (and for kprobes one instruction), each mechanism is attached alone, the CALL
(one call or a sequence: tracers.call_syntax) is run once with verify mode on and the lab's code
counted, and its first snapshot, during whichever call first reaches the function, is kept with its
comparison against the true registers. Costs are per event: the instructions the lab's guest code
(trampolines, exception entry, single-step slots) ran, and the bytes it stored. The CPU's own
exception frame (x86's 40 bytes) and the Python handlers are not counted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from emulator import FtlabError

from ..call_syntax import CallSequence
from ..core.fgraph import FgraphOps
from ..core.ftrace import FtraceOps, OpsFlag
from ..core.kprobes import Kprobe
from ..core.kretprobe import Kretprobe
from ..core.regs import ftrace_partial_regs

MECHANISMS = {
    "kprobe": "kprobe: a breakpoint, the exception's pt_regs",
    "ftrace_caller": "fentry: ftrace_caller's ftrace_regs",
    "ftrace_regs_caller": "fentry with SAVE_REGS: ftrace_regs_caller's pt_regs",
    "partial_regs": "ftrace_partial_regs(): the pt_regs BPF gets from ftrace_regs",
    # one lab's captures are titled by its release's trampoline (RethookArch.trampolines)
    "rethook": "kretprobe return: the trampoline's pt_regs (arm64: BRK #7's exception since 6.9, MRS before)",
    "fgraph_exit": "fgraph return: return_to_handler's ftrace_regs",
}


@dataclass
class Capture:
    mechanism: str
    title: str
    at: str  # where the snapshot stands: 'fib+0x4' or 'return from fib'
    kind: str = ""
    fields: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    checks: list = field(default_factory=list)
    verification: object = None
    events: int = 0
    insns: float = 0.0  # lab-code instructions per event
    stored: float = 0.0  # bytes the lab code stored per event
    refused: str | None = None  # why this arch cannot do it
    note: str | None = None  # what the release's snapshot means to its users, in a phrase
    addr: int | None = None  # where the first snapshot is in guest memory
    parent: int | None = None  # the parent ip the ftrace ops were handed at the first hit (ftrace_*)

    @property
    def mismatch(self) -> list[str]:
        return self.verification.mismatch if self.verification else []


def _snap(capture: Capture, regs) -> None:
    if capture.kind:
        return  # the first hit is the one shown
    capture.kind, capture.fields, capture.missing = regs.kind, regs.fields, list(regs.missing)
    capture.addr = regs.addr
    capture.verification = regs.verify()


def capture(lab, mechanism: str, func: str, calls: CallSequence, offset: int | None = None, watch=None) -> Capture:
    """Run the calls with one mechanism attached at func (offset: the kprobe's, default the
    instruction after the patch site) and return its first snapshot and its cost. watch: a context
    manager entered around the calls (`ftlab step`'s recorder)."""
    site = lab.ftrace.site(func)
    sym = lab.machine.symbols.get(func)
    title = lab.rethook.design.title if mechanism == "rethook" else MECHANISMS[mechanism]
    c = Capture(mechanism, title, f"{func}+{site.ip - sym.addr:#x}")
    if mechanism == "partial_regs":
        c.note = f"Linux {lab.kernel}: {lab.karch.partial_regs_of(lab.kernel).effect}"
    elif mechanism == "fgraph_exit":
        c.note = f"Linux {lab.kernel}: {lab.fgraph.design.effect}"
    elif mechanism.startswith("ftrace_") and site.encoding is not lab.karch.sites:  # an older kind of site
        c.note = f"{site.encoding.name} site: {site.encoding.where}"
    attach, detach = _attachments(lab, mechanism, func, site, sym, offset, c)
    if c.refused:
        return c
    m = lab.machine
    run_counted(lab, (_verified(lab, mechanism),), attach, detach, calls, watch)
    if c.events:
        c.insns, c.stored = m.lab_insns / c.events, m.lab_stored / c.events
    return c


def run_counted(lab, cores, attach, detach, calls: CallSequence, watch=None) -> None:
    """Run the calls with something attached and verify mode on for the cores whose snapshots it
    checks, the lab's code counted (machine.lab_insns, lab_stored); detached however the run ends.
    watch: a context manager entered around the calls."""
    m = lab.machine
    with lab.verify.holding(*cores):
        attach()
        m.count_lab_code(True)
        try:
            with watch or contextlib.nullcontext():
                lab.run_calls(calls)
        finally:
            m.count_lab_code(False)
            detach()


def _verified(lab, mechanism: str):
    """The core whose instant the mechanism's snapshot stands for."""
    return {"kprobe": lab.kprobes, "rethook": lab.rethook, "fgraph_exit": lab.fgraph}.get(mechanism, lab.ftrace)


def _attachments(lab, mechanism, func, site, sym, offset, c):
    def count(regs):
        c.events += 1
        _snap(c, regs)

    if mechanism == "kprobe":
        off = offset if offset is not None else first_probeable(lab, sym, site)
        c.at = f"{func}+{off:#x}"
        p = Kprobe(func, off, lambda p, regs: count(regs) or 0)
        try:
            lab.kprobes.check(p)
        except FtlabError as err:
            c.refused = str(err)
        return (lambda: lab.kprobes.register(p)), (lambda: lab.kprobes.unregister(p))
    if mechanism in ("ftrace_caller", "ftrace_regs_caller", "partial_regs"):
        regs_wanted = mechanism == "ftrace_regs_caller"
        if regs_wanted and lab.ftrace.callers[site.encoding.name].regs_caller is None:
            c.refused = lab.karch.no_regs_caller_reason
        scratch = lab.machine.percpu + 0x1000

        def handler(ip, parent, op, fregs):
            if not c.events:
                c.parent = parent
            regs = fregs.ftrace_get_regs() if regs_wanted else fregs
            count(ftrace_partial_regs(fregs, scratch, lab.kernel) if mechanism == "partial_regs" else regs)

        ops = FtraceOps(handler, OpsFlag.SAVE_REGS if regs_wanted else OpsFlag.NONE, filter={site.ip})
        return (lambda: lab.ftrace.register(ops)), (lambda: lab.ftrace.unregister(ops))
    c.at = f"return from {func}"
    if mechanism == "rethook":
        krp, rp = lab.kretprobes(), Kretprobe(func, lambda ri, regs: count(regs), via="ftrace")
        return (lambda: krp.register(rp)), (lambda: krp.unregister(rp))
    gops = FgraphOps(lambda trace, g, fregs: 1, lambda trace, g, fregs: count(fregs))
    gops.ops.filter = {site.ip}
    return (lambda: lab.fgraph.register(gops)), (lambda: lab.fgraph.unregister(gops))


def first_probeable(lab, sym, site) -> int:
    """The instruction after the patch site: the breakpoint path on both arches (a probe on the
    site itself is x86's kprobe-on-ftrace, which is the ftrace_regs_caller row)."""
    return site.ip + site.encoding.size - sym.addr


def capture_all(lab, func: str, calls: CallSequence, offset: int | None = None) -> list[Capture]:
    """Every mechanism that applies at func: all of them at its entry; only kprobes elsewhere.
    Calls that never reach func are an error."""
    at_entry = offset is None or lab.machine.address_of(func) + offset == lab.ftrace.site(func).ip
    if not at_entry:
        lab.kprobes.check(Kprobe(func, offset))  # a bad probe point is the user's error
    captures = [capture(lab, mech, func, calls, offset) for mech in (MECHANISMS if at_entry else ["kprobe"])]
    if any(not c.refused and not c.events for c in captures):  # nothing to show, nothing to compare
        at = func if offset is None else f"{func}+{offset:#x}"
        raise FtlabError(f"{calls.text} never reached {at}")
    return captures
