"""The mechanisms `check` attaches, each alone at one function, verify mode on: what each saw.

Each runner attaches to one function, returns how to detach, and fills a `Seen`: every snapshot
with its comparison against the true registers, the entries and exits it counted, and for kprobes
each probed instruction's hits. A registration the kernel's rules refuse is an FtlabError, which
`check` reports as n/a with its reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from emulator import FtlabError
from emulator.asm import disassemble

from ..builtin.function import FunctionTracer
from ..builtin.function_graph import FunctionGraphTracer
from ..core.fprobe import Fprobe
from ..core.kprobes import Kprobe
from ..core.kretprobe import DEFAULT_MAXACTIVE, Kretprobe
from ..core.regs import Verification
from ..output.sinks import ListSink


@dataclass(frozen=True)
class Snap:
    """One snapshot: at the entry, the exit, or (kprobe) an instruction; pc is where it stands
    (the patch site for entries and exits, the probed instruction for a kprobe)."""

    when: str  # 'entry', 'exit' or 'insn'
    pc: int
    verification: Verification | None  # None where no truth was taken


@dataclass
class Seen:
    snaps: list[Snap] = field(default_factory=list)
    entries: int = 0
    exits: int = 0
    hits: dict[int, int] = field(default_factory=dict)  # kprobe: address -> pre_handler runs
    refused: dict[int, str] = field(default_factory=dict)  # kprobe: address -> why not probed
    missed: int = 0  # nmissed of the kprobes, kretprobe or fprobe


Detach = Callable[[], None]


class Runner:
    name = ""
    counts_exits: bool | None = True  # entries and exits counted; False: entries; None: instruction hits
    needs_site = True  # attaches at the function's patch site

    def owners(self, lab) -> tuple:
        """The cores whose snapshots this mechanism's handlers see (verify mode's owners)."""
        raise NotImplementedError

    def attach(self, lab, func: str, seen: Seen, most: int) -> Detach:
        """most: how many calls of func may be in flight at once (a return pool this big misses none)."""
        raise NotImplementedError


class _TracerRunner(Runner):
    """A built-in tracer (function, function_graph) filtered to the function, verify mode on: its
    Python path, whose events carry their snapshots' verification."""

    tracer: type

    def owners(self, lab) -> tuple:
        return ()  # the tracer holds its own (verify=True)

    def attach(self, lab, func, seen, most):
        site = lab.ftrace.site(func)  # no site: n/a, with ftrace's reason
        sink = ListSink()
        tracer = self.tracer(lab, sink, filters=[func], verify=True)
        tracer.__enter__()

        def detach():
            tracer.__exit__(None, None, None)
            for ev in sink.events:
                if ev.ip == site.ip:
                    seen.snaps.append(Snap(ev.type, site.ip, ev.verification))
                    seen.entries += ev.type == "entry"
                    seen.exits += ev.type == "exit"

        return detach


class FunctionRunner(_TracerRunner):
    name = "function"
    tracer = FunctionTracer
    counts_exits = False


class GraphRunner(_TracerRunner):
    name = "function_graph"
    tracer = FunctionGraphTracer


class FprobeRunner(Runner):
    """An fprobe with entry and exit handlers, on the design of the lab's kernel release."""

    def __init__(self, design: str):
        self.design = design
        self.name = f"fprobe({design})"

    def owners(self, lab):
        return (lab.ftrace, lab.fgraph, lab.rethook)

    def attach(self, lab, func, seen, most):
        site = lab.ftrace.site(func)
        fprobes = lab.fprobes()

        def entry(fp, ip, ret_ip, regs, data):
            seen.entries += 1
            seen.snaps.append(Snap("entry", site.ip, regs.verify()))
            return 0

        def exit_(fp, ip, ret_ip, regs, data):
            seen.exits += 1
            seen.snaps.append(Snap("exit", site.ip, regs.verify()))

        fp = Fprobe(entry, exit_, nr_maxactive=most)
        fprobes.register_syms(fp, [func])

        def detach():
            fprobes.unregister(fp)
            seen.missed += fp.nmissed

        return detach


class KretprobeRunner(Runner):
    """register_kretprobe(): a kprobe at the entry (on x86 a kprobe on ftrace) and the rethook
    trampoline at the return, an entry_handler and a handler."""

    name = "kretprobe"

    def owners(self, lab):
        return (lab.ftrace, lab.kprobes, lab.rethook)

    def attach(self, lab, func, seen, most):
        site = lab.ftrace.site(func)
        krp = lab.kretprobes()

        def entry(ri, regs):
            seen.entries += 1
            seen.snaps.append(Snap("entry", site.ip, regs.verify()))
            return 0

        def ret(ri, regs):
            seen.exits += 1
            seen.snaps.append(Snap("exit", site.ip, regs.verify()))

        rp = Kretprobe(func, ret, entry_handler=entry, maxactive=max(DEFAULT_MAXACTIVE, most))
        krp.register(rp)

        def detach():
            krp.unregister(rp)
            seen.missed += rp.nmissed

        return detach


class KprobeRunner(Runner):
    """A kprobe on every instruction of the function at once; those the kernel's rules refuse are
    noted with the reason."""

    name = "kprobe"
    counts_exits = None
    needs_site = False

    def owners(self, lab):
        return (lab.ftrace, lab.kprobes)

    def attach(self, lab, func, seen, most):
        m = lab.machine
        sym = m.symbols.get(func)
        probes = []

        def pre(p, regs):
            seen.hits[p.addr] = seen.hits.get(p.addr, 0) + 1
            seen.snaps.append(Snap("insn", p.addr, regs.verify()))
            return 0

        for addr, _, _ in disassemble(m.arch, m.read(sym.addr, sym.size), sym.addr):
            p = Kprobe(func, addr - sym.addr, pre)
            try:
                at = lab.kprobes.check(p)
                if at != addr:  # arch_adjust_kprobe_addr: x86 moves a probe on ENDBR past it
                    raise FtlabError(f"kprobe: {m.symbols.name(addr)} is probed at {m.symbols.name(at)} instead")
                lab.kprobes.register(p)
            except FtlabError as err:
                seen.refused[addr] = str(err)
                continue
            seen.hits.setdefault(p.addr, 0)
            probes.append(p)

        def detach():
            for p in probes:
                lab.kprobes.unregister(p)
                seen.missed += p.nmissed

        return detach


def runners(lab) -> list[Runner]:
    """Every mechanism `check` runs, fprobe on the design the lab's kernel release has (fgraph since
    6.14, rethook before: lab.fprobes()); one the arch lacks there is refused at registration."""
    return [FunctionRunner(), GraphRunner(), FprobeRunner(lab.fprobes().design), KretprobeRunner(), KprobeRunner()]
