"""rethook (kernel/trace/rethook.c): hook a function's return through a trampoline that builds a
pt_regs, run the handlers of every node returning through it, and return to the real address.
arm64 never had rethook: its kretprobes (kernel/kprobes.c without KRETPROBE_ON_RETHOOK) hook the
return the same way through __kretprobe_trampoline, which this core models too.

Each user has a bounded pool of nodes (rethook_alloc); hooked nodes form one per-task LIFO keyed
by frame (x86: the return slot's address, arm64: the frame pointer at entry), which unwinders
search to undo the hook (rethook_find_ret_addr).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emulator import FtlabError
from emulator.layout import Layout

from ..kernel_version import MODELLED, KernelVersion
from .ftrace import Ftrace
from .regs import PtRegs

CALLBACK_ARGS = Layout.of("callback_args", ("regs",))  # the trampoline callback's mailbox
REGS_ARG = CALLBACK_ARGS.index("regs")


@dataclass(eq=False)
class RethookNode:
    rethook: Rethook
    data: int | None  # guest address of the node's private data (data_size bytes)
    ret_addr: int = 0
    frame: int = 0
    func: int = 0  # the hooked function's entry ip


class Rethook:
    """One user's pool (rethook_alloc(data, handler, size, num)); handler(node, regs) at return."""

    def __init__(self, core: RethookCore, handler: Callable[[RethookNode, PtRegs], None], data_size: int, num: int):
        if num <= 0:
            raise FtlabError(f"rethook: a pool needs at least one node, not {num}")
        self.core, self.handler = core, handler
        alloc = core.m.alloc
        self.free = [RethookNode(self, alloc("lab data", data_size, 16) if data_size else None) for _ in range(num)]

    def try_get(self) -> RethookNode | None:
        return self.free.pop() if self.free else None

    def recycle(self, node: RethookNode) -> None:
        self.free.append(node)

    def hook(self, node: RethookNode, regs, func: int) -> None:
        """arch_rethook_prepare: remember the return address and frame, then replace it."""
        node.ret_addr = regs.get_return_address()
        node.frame = regs.get_stack_pointer() if self.core.karch.fgraph.retp == "sp" else regs.get_frame_pointer()
        node.func = func
        regs.set_return_address(self.core.trampoline)
        self.core.task.append(node)


class RethookCore:
    """The return trampoline and the task's list of hooked nodes (current->rethooks).

    The trampoline is the kernel release's (RethookArch.trampolines): one that builds a pt_regs
    and calls the handler, or a breakpoint (arm64 since 6.9), whose handler kprobes' trap calls
    with the exception's pt_regs (`break_hooks`)."""

    def __init__(self, ftrace: Ftrace, kernel: KernelVersion = MODELLED):
        self.ftrace, self.m = ftrace, ftrace.m
        self.karch = ftrace.karch
        self.design = design = self.karch.rethook.trampoline(kernel)
        syms = self.karch.load(self.m, design.source, CALLBACK_ARGS.asm_constants("CALLBACK_ARGS_"))
        self.trampoline = syms[design.symbol]
        if not design.trap:
            self._regs_arg = self.m.mailbox(syms[design.callback], syms["callback_args"], CALLBACK_ARGS)
            self.m.hook_call(self._callback, syms["rethook_callback_lab"])
        self.task: list[RethookNode] = []
        self.verify = ftrace.verify  # the return's snapshot stands at the trampoline
        self.verify.add(self, "rethook", lambda: (self.trampoline,))
        self.m.on_abandoned_call(self.flush_task)

    def break_hooks(self) -> dict[int, Callable[[int], None]]:
        """The breakpoints this trampoline owns, for kprobes' trap: address -> handler(regs address)
        (arm64's register_kernel_break_hook(&kretprobes_break_hook); kretprobe_brk_handler checks
        regs->pc == __kretprobe_trampoline, as the dispatch by address here does)."""
        return {self.trampoline: self._handler} if self.design.trap else {}

    def flush_task(self) -> None:
        """rethook_flush_task: the task's hooked calls will never return, so their nodes go back to
        their pools (kernel/trace/rethook.c, torvalds/linux 03c11eb3b16d)."""
        while self.task:
            node = self.task.pop()
            node.rethook.recycle(node)

    def find_ret_addr(self, ret: int, frame: int) -> int:
        """rethook_find_ret_addr for unwinders: the real return address of a hooked frame."""
        if ret != self.trampoline:
            return ret
        return next((n.ret_addr for n in reversed(self.task) if n.frame == frame), ret)

    def _callback(self, _addr: int) -> None:
        """The trampoline's call (arch_rethook_trampoline_callback, trampoline_probe_handler)."""
        design = self.design
        self.karch.check_call_alignment(
            self.m, lambda: self.karch.describe(design.source, design.symbol), design.callback
        )
        self._handler(self._regs_arg[REGS_ARG])

    def _handler(self, regs_addr: int) -> None:
        """rethook_trampoline_handler(regs, frame) / kretprobe_trampoline_handler(regs, frame)."""
        karch = self.karch
        truth = self.verify.take(self.trampoline)
        if not self.task:
            raise FtlabError("rethook: the trampoline was reached with no hooked return")
        # The first node returning to a real address (not the trampoline) is this frame's.
        nodes = []
        for node in reversed(self.task):
            nodes.append(node)
            if node.ret_addr != self.trampoline:
                break
        correct = nodes[-1].ret_addr
        regs = PtRegs(karch, self.m, regs_addr, karch.rethook.saved, truth, {karch.cpu.pc: correct} if truth else None)
        frame = karch.rethook.enter(regs)
        regs.instruction_pointer_set(correct)
        try:
            for node in nodes:
                if node.frame != frame:
                    raise FtlabError(
                        f"rethook: node for {self.m.symbols.name(node.func)} has frame "
                        f"{node.frame:#x}, the trampoline {frame:#x}"
                    )
                node.rethook.handler(node, regs)
        finally:
            if self.design.trap:  # kretprobe_brk_handler: the exception returns to the real address
                regs.instruction_pointer_set(correct)
            karch.rethook.leave(regs, frame, correct, self.m.write)
            del self.task[len(self.task) - len(nodes) :]
            for node in nodes:
                node.rethook.recycle(node)
