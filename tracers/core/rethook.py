"""rethook (kernel/trace/rethook.c): hook a function's return through a trampoline that builds a
pt_regs, run the handlers of every node returning through it, and return to the real address.
arm64 never had rethook: its kretprobes (kernel/kprobes.c without KRETPROBE_ON_RETHOOK) hook the
return the same way through __kretprobe_trampoline, which this core models too.

Each user has a bounded pool of nodes (rethook_alloc); hooked nodes form one per-task LIFO keyed
by frame (x86: the return slot's address, arm64: the frame pointer at entry), which unwinders
search to undo the hook (rethook_find_ret_addr).

The pools and the task's list live in guest memory (RETHOOK, RETHOOK_NODE, RETHOOK_TASK: singly
linked, as the kernel's objpool and current->rethooks llist), so that where the arch has them
(rethook_guest.py), guest code takes, hooks and recycles nodes and runs the return's handlers with
no Python, sharing the list with the Python users here: a node whose pool's handler is guest code
returns in guest code, any other frame through Python (_handler)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from emulator import FtlabError
from emulator.layout import Layout

from ..kernel_version import MODELLED, KernelVersion
from .ftrace import Ftrace
from .regs import PtRegs

CALLBACK_ARGS = Layout.of("callback_args", ("regs",))  # the trampoline callback's mailbox
REGS_ARG = CALLBACK_ARGS.index("regs")
# struct rethook: its return handler in guest code and that handler's data (handler 0: the pool's
# user is Python, Rethook.handler), and the free nodes' list
RETHOOK = Layout.of("rethook", ("handler", "data", "free"))
# struct rethook_node: the list link (free or hooked), its pool, and what arch_rethook_prepare
# saved; func (the hooked function's entry) and data (the user's private data's address, 0: none)
# are the kretprobe_instance's / fprobe_rethook_node's in the kernel
RETHOOK_NODE = Layout.of("rethook_node", ("next", "rethook", "ret_addr", "frame", "func", "data"))
# the task's state: current->rethooks' first node (0: none); verify: non-zero while verify mode
# holds the trampoline, whose returns then take Python (the truth is read there)
RETHOOK_TASK = Layout.of("rethook task", ("first", "verify"))
NEXT, RETHOOK_OF, RET_ADDR, FRAME, FUNC = (
    RETHOOK_NODE.index(n) for n in ("next", "rethook", "ret_addr", "frame", "func")
)
HANDLER, FREE = RETHOOK.index("handler"), RETHOOK.index("free")
FIRST, VERIFY = RETHOOK_TASK.index("first"), RETHOOK_TASK.index("verify")


def words(m, addr: int, layout: Layout) -> memoryview:
    """A struct in guest memory as its u64 words, read and written in place."""
    return m.view(addr, layout.size).cast("Q")


class RethookNode:
    """A node in guest memory (RETHOOK_NODE at addr); data: its private data's address, or None."""

    __slots__ = ("rethook", "addr", "data", "words")

    def __init__(self, rethook: Rethook, addr: int, data: int | None):
        self.rethook, self.addr, self.data = rethook, addr, data
        self.words = words(rethook.core.m, addr, RETHOOK_NODE)
        self.words[RETHOOK_OF], self.words[RETHOOK_NODE.index("data")] = rethook.addr, data or 0

    @property
    def ret_addr(self) -> int:
        return self.words[RET_ADDR]

    @property
    def frame(self) -> int:
        return self.words[FRAME]

    @property
    def func(self) -> int:
        return self.words[FUNC]


class Rethook:
    """One user's pool (rethook_alloc(data, handler, size, num)); handler(node, regs) at return.
    guest: the handler in guest code too, (code, data), called at return with no Python (see
    rethook_guest.py for how)."""

    def __init__(
        self,
        core: RethookCore,
        handler: Callable[[RethookNode, PtRegs], None],
        data_size: int,
        num: int,
        guest: tuple[int, int] | None = None,
    ):
        if num <= 0:
            raise FtlabError(f"rethook: a pool needs at least one node, not {num}")
        self.core, m = core, core.m
        self.handler: Callable[[RethookNode, PtRegs], None] | None = handler
        self.addr = m.alloc("lab data", RETHOOK.size, 64)
        self.words = words(m, self.addr, RETHOOK)
        self.words[HANDLER], self.words[RETHOOK.index("data")] = guest or (0, 0)
        self.words[FREE] = 0
        nodes = m.alloc("lab data", num * RETHOOK_NODE.size, 64)
        stride = -(-data_size // 16) * 16
        datas = m.alloc("lab data", num * stride, 16) if data_size else 0
        for i in range(num):
            node = RethookNode(self, nodes + i * RETHOOK_NODE.size, datas + i * stride if data_size else None)
            core.nodes[node.addr] = node
            self.recycle(node)

    def release(self) -> None:
        """rethook_free (kernel/trace/rethook.c): the handler goes, so the returns still hooked run
        none (rethook_trampoline_handler calls a handler only while there is one; arm64's
        __kretprobe_trampoline_handler likewise, once unregister_kretprobes cleared the
        holder's rp); they go back to the real return address and their nodes to the pool all
        the same. Those returns take the Python path, which knows."""
        self.handler = None
        self.words[HANDLER] = 0

    @property
    def free(self) -> list[RethookNode]:
        """The free nodes, the next to be taken last."""
        return list(self.core.walk(self.words[FREE]))[::-1]

    @free.setter
    def free(self, nodes: list[RethookNode]) -> None:
        self.words[FREE] = 0
        for node in nodes:
            self.recycle(node)

    def try_get(self) -> RethookNode | None:
        """rethook_try_get: a node off the free list (objpool_pop), or None when it is empty."""
        first = self.words[FREE]
        if not first:
            return None
        node = self.core.nodes[first]
        self.words[FREE] = node.words[NEXT]
        return node

    def recycle(self, node: RethookNode) -> None:
        """rethook_recycle: back on the free list (objpool_push)."""
        node.words[NEXT], self.words[FREE] = self.words[FREE], node.addr

    def hook(self, node: RethookNode, regs, func: int) -> None:
        """rethook_hook: arch_rethook_prepare remembers the return address and frame, then replaces
        it; the node goes first on the task's list (__llist_add)."""
        core, w = self.core, node.words
        w[RET_ADDR] = regs.get_return_address()
        w[FRAME] = regs.get_stack_pointer() if core.karch.fgraph.retp == "sp" else regs.get_frame_pointer()
        w[FUNC] = func
        regs.set_return_address(core.trampoline)
        w[NEXT], core.state[FIRST] = core.state[FIRST], node.addr


class RethookCore:
    """The return trampoline and the task's list of hooked nodes (current->rethooks).

    The trampoline is the kernel release's (RethookArch.trampolines): one that builds a pt_regs
    and calls the handler, or a breakpoint (arm64 since 6.9), whose handler kprobes' trap calls
    with the exception's pt_regs (`break_hooks`). Where the trampoline's callback has a guest
    handler, `code` is it (rethook_guest.RethookCode, which the lab loads after its other code)."""

    def __init__(self, ftrace: Ftrace, kernel: KernelVersion = MODELLED):
        self.ftrace, self.m = ftrace, ftrace.m
        self.karch = ftrace.karch
        self.nodes: dict[int, RethookNode] = {}  # every pool's nodes, by address
        self.addr = self.m.alloc("lab data", RETHOOK_TASK.size, 64)
        self.state = words(self.m, self.addr, RETHOOK_TASK)
        self.state[FIRST] = self.state[VERIFY] = 0
        self.design = design = self.karch.rethook.trampoline(kernel)
        syms = self.karch.load(self.m, design.source, CALLBACK_ARGS.asm_constants("CALLBACK_ARGS_"))
        self.trampoline, self.syms = syms[design.symbol], syms
        self.code: Any = None
        if not design.trap:
            self._regs_arg = self.m.mailbox(syms[design.callback], syms["callback_args"], CALLBACK_ARGS)
            self.m.hook_call(self._callback, syms["rethook_callback_lab"])
        self.verify = ftrace.verify  # the return's snapshot stands at the trampoline
        self.verify.add(self, "rethook", lambda: (self.trampoline,), self._verify_toggled)
        self.m.on_abandoned_call(self.flush_task)

    def walk(self, addr: int) -> Iterator[RethookNode]:
        """The nodes of a list from its first, in list order."""
        while addr:
            node = self.nodes[addr]
            yield node
            addr = node.words[NEXT]

    @property
    def task(self) -> list[RethookNode]:
        """The task's hooked nodes, the first hooked first."""
        return list(self.walk(self.state[FIRST]))[::-1]

    def _verify_toggled(self) -> None:
        """Verify mode reads the truth at the trampoline in Python: the guest handler leaves it the
        returns while it is held."""
        self.state[VERIFY] = int(self.verify.held(self))

    def break_hooks(self) -> dict[int, Callable[[int], None]]:
        """The breakpoints this trampoline owns, for kprobes' trap: address -> handler(regs address)
        (arm64's register_kernel_break_hook(&kretprobes_break_hook); kretprobe_brk_handler checks
        regs->pc == __kretprobe_trampoline, as the dispatch by address here does)."""
        return {self.trampoline: self._handler} if self.design.trap else {}

    def flush_task(self) -> None:
        """rethook_flush_task: the task's hooked calls will never return, so their nodes go back to
        their pools (kernel/trace/rethook.c, torvalds/linux 03c11eb3b16d)."""
        nodes, self.state[FIRST] = list(self.walk(self.state[FIRST])), 0
        for node in nodes:
            node.rethook.recycle(node)

    def find_ret_addr(self, ret: int, frame: int) -> int:
        """rethook_find_ret_addr for unwinders: the real return address of a hooked frame."""
        if ret != self.trampoline:
            return ret
        return next((n.ret_addr for n in self.walk(self.state[FIRST]) if n.frame == frame), ret)

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
        if not self.state[FIRST]:
            raise FtlabError("rethook: the trampoline was reached with no hooked return")
        # The first node returning to a real address (not the trampoline) is this frame's.
        nodes = []
        for node in self.walk(self.state[FIRST]):
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
                if node.rethook.handler is not None:
                    node.rethook.handler(node, regs)
        finally:
            if self.design.trap:  # kretprobe_brk_handler: the exception returns to the real address
                regs.instruction_pointer_set(correct)
            karch.rethook.leave(regs, frame, correct, self.m.write)
            self.state[FIRST] = nodes[-1].words[NEXT]
            for node in nodes:
                node.rethook.recycle(node)
