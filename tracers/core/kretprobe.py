"""kretprobes (kernel/kprobes.c): on rethook where the arch has it (x86, CONFIG_KRETPROBE_ON_RETHOOK),
else through the arch's __kretprobe_trampoline (arm64), which the lab's rethook core also models.

The entry is a kprobe at the function's first instruction (`via="kprobe"`): a breakpoint and the
exception's pt_regs, or on x86 the ftrace site with ftrace_regs_caller's pt_regs, as the kernel
does. `via="ftrace"` takes it through a plain ftrace_ops instead, with ftrace_regs (the cheaper
entry fprobe uses). The return handler sees the pt_regs of the release's return trampoline:
x86's rethook trampoline; arm64's BRK #7 exception since 6.9, its MRS-built pt_regs before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from emulator import FtlabError

from .ftrace import FtraceOps, OpsFlag
from .kprobes import Kprobe
from .regs import FtraceRegs, PtRegs
from .rethook import Rethook, RethookNode

NR_CPUS = 1
DEFAULT_MAXACTIVE = max(10, 2 * NR_CPUS)  # kretprobe's default pool size


@dataclass(eq=False)
class Kretprobe:
    """struct kretprobe. handler(ri, regs) at return; entry_handler(ri, regs) returning non-zero
    means "don't hook this call" (regs: the kprobe's pt_regs, or ftrace_regs with via="ftrace").
    `ri` is the rethook node: ri.data is its private data's address."""

    symbol: str
    handler: Callable[[RethookNode, PtRegs], None] | None
    entry_handler: Callable[[RethookNode, PtRegs | FtraceRegs], int] | None = None
    maxactive: int = 0
    data_size: int = 0
    nmissed: int = 0
    nhit: int = 0
    via: str = "kprobe"  # how the entry is taken: 'kprobe' or 'ftrace'
    ops: object = field(default=None, repr=False)  # the FtraceOps or Kprobe behind the entry
    rethook: Rethook | None = field(default=None, repr=False)


class Kretprobes:
    def __init__(self, ftrace, kprobes, rethook):
        self.ftrace, self.kprobes, self.rethook = ftrace, kprobes, rethook
        self.probes: list[Kretprobe] = []

    def register(self, rp: Kretprobe) -> None:
        if rp in self.probes:
            raise FtlabError(f"kretprobe on {rp.symbol} is already registered")
        if rp.via not in ("kprobe", "ftrace"):
            raise FtlabError(f"kretprobe: via must be 'kprobe' or 'ftrace', not '{rp.via}'")
        site = self.ftrace.site(rp.symbol)
        rp.rethook = Rethook(
            self.rethook,
            lambda node, regs: self._return(rp, node, regs),
            rp.data_size,
            rp.maxactive or DEFAULT_MAXACTIVE,
        )
        if rp.via == "ftrace":
            rp.ops = FtraceOps(
                lambda ip, parent, op, fregs: self._entry(rp, ip, fregs),
                OpsFlag.RECURSION,
                name=f"kretprobe:{rp.symbol}",
                filter={site.ip},
            )
            self.ftrace.register(rp.ops)
        else:
            rp.ops = Kprobe(rp.symbol, 0, lambda p, regs: self._entry(rp, site.ip, regs) or 0)
            self.kprobes.register(rp.ops)
        self.probes.append(rp)

    def unregister(self, rp: Kretprobe) -> None:
        if rp not in self.probes:
            raise FtlabError(f"kretprobe on {rp.symbol} is not registered")
        if rp.via == "ftrace":
            self.ftrace.unregister(rp.ops)
        else:
            self.kprobes.unregister(rp.ops)
        self.probes.remove(rp)

    def _entry(self, rp: Kretprobe, ip: int, regs) -> None:
        node = rp.rethook.try_get()
        if node is None:  # the pool is empty: this return is missed
            rp.nmissed += 1
            return
        rp.nhit += 1
        if rp.entry_handler and rp.entry_handler(node, regs):
            rp.rethook.recycle(node)
            return
        rp.rethook.hook(node, regs, ip)

    def _return(self, rp: Kretprobe, node: RethookNode, regs: PtRegs) -> None:
        if rp.handler:
            rp.handler(node, regs)
