"""kretprobes on rethook (kernel/kprobes.c with CONFIG_KRETPROBE_ON_RETHOOK).

The entry is taken at the function's patch site through ftrace (as a kprobe on an fentry site is,
KPROBES_ON_FTRACE), so the entry handler sees ftrace_regs; the return handler sees the pt_regs the
rethook trampoline built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from emulator import FtlabError

from .ftrace import FtraceOps, OpsFlag
from .regs import FtraceRegs, PtRegs
from .rethook import Rethook, RethookNode

NR_CPUS = 1
DEFAULT_MAXACTIVE = max(10, 2 * NR_CPUS)        # kretprobe's default pool size


@dataclass(eq=False)
class Kretprobe:
    """struct kretprobe. handler(ri, regs) at return; entry_handler(ri, fregs) returning non-zero
    means "don't hook this call". `ri` is the rethook node: ri.data is its private data's address."""

    symbol: str
    handler: Callable[[RethookNode, PtRegs], None] | None
    entry_handler: Callable[[RethookNode, FtraceRegs], int] | None = None
    maxactive: int = 0
    data_size: int = 0
    nmissed: int = 0
    nhit: int = 0
    ops: FtraceOps | None = field(default=None, repr=False)
    rethook: Rethook | None = field(default=None, repr=False)


class Kretprobes:
    def __init__(self, lab):
        self.lab = lab
        self.probes: list[Kretprobe] = []

    def register(self, rp: Kretprobe) -> None:
        if rp in self.probes:
            raise FtlabError(f"kretprobe on {rp.symbol} is already registered")
        site = self.lab.ftrace.site(rp.symbol)
        rp.rethook = Rethook(self.lab.rethook, lambda node, regs: self._return(rp, node, regs),
                             rp.data_size, rp.maxactive or DEFAULT_MAXACTIVE)
        rp.ops = FtraceOps(lambda ip, parent, op, fregs: self._entry(rp, ip, fregs), OpsFlag.RECURSION,
                           name=f"kretprobe:{rp.symbol}", filter={site.ip})
        self.probes.append(rp)
        self.lab.ftrace.register(rp.ops)

    def unregister(self, rp: Kretprobe) -> None:
        if rp not in self.probes:
            raise FtlabError(f"kretprobe on {rp.symbol} is not registered")
        self.lab.ftrace.unregister(rp.ops)
        self.probes.remove(rp)

    def _entry(self, rp: Kretprobe, ip: int, fregs: FtraceRegs) -> None:
        node = rp.rethook.try_get()
        if node is None:                       # the pool is empty: this return is missed
            rp.nmissed += 1
            return
        rp.nhit += 1
        if rp.entry_handler and rp.entry_handler(node, fregs):
            rp.rethook.recycle(node)
            return
        rp.rethook.hook(node, fregs, ip)

    def _return(self, rp: Kretprobe, node: RethookNode, regs: PtRegs) -> None:
        if rp.handler:
            rp.handler(node, regs)
