"""Every BPF route at one function, side by side: what a program gets as ctx, what of it is
wrong, and what one call through the route costs. The program is the smallest there is
(`r0 = 0; exit`), so the cost is the route's own: the guest instructions the lab's code ran (the
kprobe's exception entry and exit, ftrace_caller and the fprobe's return hook, the BPF
trampoline with __bpf_prog_enter/exit) and the bytes it stored, per program run, plus the
program's BPF instructions. The Python that stands for kernel C (the kprobe and fprobe handlers,
ftrace_partial_regs()'s copy, the interpreter) is not counted; the copy's bytes are named.

The last row is the LPC 2023 proposal that has not landed: an fprobe program handed the
ftrace_regs itself, with no pt_regs made from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from emulator import FtlabError

from ..bpf import isa
from ..bpf.interpreter import Interpreter
from ..bpf.object import BpfProgramSpec, LoadedProgram
from ..bpf.routes import BpfLinks
from ..call_syntax import CallSequence
from ..core.bpf_trampoline import BpfTrampolines
from ..core.fprobe import Fprobe
from ..core.regs import Verification
from .mechanisms import Capture, run_counted

ROUTES = ("kprobe", "kretprobe", "kprobe.multi", "kretprobe.multi", "fentry", "fexit")
PROPOSAL = "fprobe (proposal)"
PROGRAM_NOTE = "guest instructions and bytes stored by the lab's code, and BPF instructions"
# r0 = 0; exit
PROGRAM = [isa.Insn(0xB7, 0, 0, 0, 0), isa.Insn(0x95, 0, 0, 0, 0)]


@dataclass
class RouteCost:
    route: str
    ctx: str = ""
    wrong: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    runs: int = 0
    insns: float = 0.0  # lab-code instructions per run
    stored: float = 0.0  # bytes lab code stored per run
    bpf_insns: float = 0.0
    refused: str | None = None
    note: str | None = None
    verification: Verification | None = None  # the first run's ctx against the truth


def route_costs(lab, func: str, calls: CallSequence) -> list[RouteCost]:
    return [*(_measure(lab, route, func, calls) for route in ROUTES), _proposal(lab, func, calls)]


def _measure(lab, route: str, func: str, calls: CallSequence) -> RouteCost:
    cost = RouteCost(route)
    m = lab.machine
    interp = Interpreter(m, m.alloc("bpf", 4096, 16) + 4096, {}, {})
    spec = BpfProgramSpec("route_cost", f"{route}/{func}", route, func, list(PROGRAM))
    prog = LoadedProgram(spec, list(PROGRAM))

    def run_program(_prog, ctx, env):
        return interp.run(PROGRAM, ctx, env, name=spec.section), interp.executed

    def on_run(run) -> None:
        cost.runs += 1
        cost.bpf_insns += run.insns
        if cost.runs == 1:  # the first run's ctx is the one shown
            cost.missing, cost.verification = run.missing, run.verification
            cost.wrong = tuple(run.verification.mismatch) if run.verification else ()

    tramps = BpfTrampolines(lab.ftrace, lab.kernel)
    links = BpfLinks(lab, run_program, on_run, tramps)
    cost.ctx = "u64 ctx[] (BPF trampoline)" if route.startswith("f") else _ctx_kind(lab, route)
    cores = (lab.ftrace, tramps, lab.kprobes, lab.rethook, lab.fgraph)
    try:
        run_counted(lab, cores, lambda: links.attach(prog), links.detach_all, calls)
    except FtlabError as err:
        cost.refused = str(err)
        return cost
    if cost.runs:
        cost.insns, cost.stored, cost.bpf_insns = (
            m.lab_insns / cost.runs,
            m.lab_stored / cost.runs,
            cost.bpf_insns / cost.runs,
        )
    if route.endswith("multi") and not lab.karch.ftrace_regs_is_pt_regs:
        cost.note = f"ftrace_partial_regs() also writes a {lab.karch.pt_regs.size}-byte pt_regs per run (not counted)"
    return cost


def route_captures(lab, func: str, calls: CallSequence) -> list[Capture]:
    """The routes as `ftlab regs` shows mechanisms: each ctx field, saved and true."""
    site = lab.ftrace.site(func)
    at = f"{func}+{site.ip - lab.machine.symbols.get(func).addr:#x}"
    return [
        Capture(
            f"bpf:{c.route}",
            f"BPF {c.route}: {c.ctx}",
            f"return from {func}" if c.route in ("kretprobe", "kretprobe.multi", "fexit") else at,
            kind=c.ctx,
            missing=list(c.missing),
            verification=c.verification,
            events=c.runs,
            insns=c.insns,
            stored=c.stored,
            refused=c.refused,
            note=c.note,
        )
        for c in route_costs(lab, func, calls)
    ]


def _ctx_kind(lab, route: str) -> str:
    if route == "kprobe":  # on x86 at a function's entry: kprobe-on-ftrace, ftrace_regs_caller's
        return "pt_regs (the exception's, or ftrace_regs_caller's)"
    if route == "kretprobe":
        return "pt_regs (the return trampoline's)"
    same = lab.karch.ftrace_regs_is_pt_regs
    return "partial pt_regs: the ftrace_regs itself" if same else "partial pt_regs: a per-CPU copy"


def _proposal(lab, func: str, calls: CallSequence) -> RouteCost:
    """An fprobe program handed ftrace_regs: the fprobe's cost, no conversion, nothing made up."""
    cost = RouteCost(PROPOSAL, "ftrace_regs (not landed)")
    m = lab.machine
    fprobes = lab.fprobes()
    fp = Fprobe()

    def entry(f, ip, ret_ip, fregs, data) -> int:
        cost.runs += 1
        if cost.runs == 1:
            cost.missing, cost.verification = tuple(fregs.missing), fregs.verify()
            cost.wrong = tuple(cost.verification.mismatch) if cost.verification else ()
        return 0

    fp.entry_handler = entry
    try:
        attach, detach = (lambda: fprobes.register_syms(fp, [func])), (lambda: fprobes.unregister(fp))
        run_counted(lab, (lab.ftrace,), attach, detach, calls)
    except FtlabError as err:
        cost.refused = str(err)
        return cost
    if cost.runs:
        cost.insns, cost.stored, cost.bpf_insns = m.lab_insns / cost.runs, m.lab_stored / cost.runs, len(PROGRAM)
    cost.note = "the LPC 2023 proposal (not landed): no pt_regs is made, no field is invented"
    return cost
