"""Function graph (kernel/trace/fgraph.c, the 6.11+ multi-user design, 6.14+ ftrace_regs).

A registered fgraph_ops gets entryfunc(trace, gops, fregs) at a function's entry; if any returns
non-zero, the function's return is hooked (x86: the return slot on the stack, arm64: lr in
fregs) to return_to_handler, and retfunc(trace, gops, fregs) runs when it returns.

The per-task shadow stack is a 4 KiB array of words in guest memory, laid out as the kernel's
(kernel/trace/fgraph.c, gregkh/linux 000aa47a5123; the stack grows upward; the frame is 6.13+'s,
without the calltime that commit f1f36e22bee9 moved into the function_graph tracer's reserved data):

    | data header: offset | type 2 << 10 | (words-1) << 12 | idx << 17 |  <- curr_ret_stack - 1
    | data words ...                                                   |   (per reserved data)
    | bitmap word: FGRAPH_FRAME_OFFSET | type 1 << 10 | bitmap << 12   |   (BIT(0) always set)
    | struct ftrace_ret_stack { ret, func, [fp], retp }                |  <- frame start

Every offset counts words back to the frame. The top 16 words hold the users' task variables;
a new frame must fit below SHADOW_STACK_MAX_OFFSET, which leaves room for one more frame.

Each of these is declared once below (FTRACE_RET_STACK, BITMAP_WORD, DATA_WORD, FG_CONTROL), for
this module and for the guest code that pushes and pops frames (asm_constants).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from emulator import FtlabError
from emulator.layout import Bits, Layout

from ..kernel_version import MODELLED, KernelVersion
from .ftrace import Ftrace, FtraceOps
from .regs import FtraceRegs

SHADOW_STACK_SIZE = 4096
SHADOW_STACK_OFFSET = SHADOW_STACK_SIZE // 8  # in words
FGRAPH_ARRAY_SIZE = 16  # users at once; the top 16 words are their task vars
SHADOW_STACK_TASK_VARS = SHADOW_STACK_OFFSET - FGRAPH_ARRAY_SIZE  # word index of task var 0
FGRAPH_MAX_DATA_SIZE = 256  # bytes one user may reserve per frame
WORD = struct.Struct("<Q")
MASK64 = (1 << 64) - 1

# The task's fgraph state, in guest memory so that the guest fast path and this module share it:
# task->curr_ret_stack (words) and curr_ret_depth, max_graph_depth, trace_overrun, task->ret_stack,
# and what the lone guest user pushes (the return hook, its data header and bitmap words).
FG_CONTROL = Layout.of(
    "fgraph task", ("curr", "depth", "max_depth", "overrun", "stack", "return_to_handler", "header", "bitmap")
)
CURR, DEPTH, MAX_DEPTH, OVERRUN = (FG_CONTROL.index(n) for n in ("curr", "depth", "max_depth", "overrun"))
# struct ftrace_ret_stack, the frame; fp where HAVE_FUNCTION_GRAPH_FP_TEST has it checked (by fp_test)
FTRACE_RET_STACK = {
    fp_test: Layout.of("ftrace_ret_stack", ("ret", "func", "fp", "retp") if fp_test else ("ret", "func", "retp"))
    for fp_test in (False, True)
}
# What a lone user with guest code pushes: its frame, the bitmap word, and one word of reserved
# data with its header, as _enter pushes them for a user that reserves 8 bytes.
GUEST_PUSH = {
    fp_test: frame.extend("fgraph guest push", ("bitmap", "data", "header"))
    for fp_test, frame in FTRACE_RET_STACK.items()
}


def fgraph_frame_offset(fp_test: bool) -> int:
    """FGRAPH_FRAME_OFFSET: struct ftrace_ret_stack's size in words, the bitmap word's offset."""
    return FTRACE_RET_STACK[fp_test].nr_words


def shadow_stack_max_offset(fp_test: bool) -> int:
    """SHADOW_STACK_MAX_OFFSET: the first word a new frame and its bitmap word may not reach; it
    leaves one frame, its bitmap word and the task vars at the top."""
    return SHADOW_STACK_OFFSET - (fgraph_frame_offset(fp_test) + 1 + FGRAPH_ARRAY_SIZE)


RETURN_ARGS = Layout.of("return_args", ("fregs",))  # ftrace_return_to_handler's mailbox
FREGS_ARG = RETURN_ARGS.index("fregs")

# The words above a frame (kernel/trace/fgraph.c, gregkh/linux 000aa47a5123): the offset back to
# the frame and the word's type, then for a BITMAP word the users that want the return, for a
# DATA word the size (in words, minus one) and user of the data below it.
FGRAPH_WORD = Bits("fgraph word", {"frame_offset": 10, "type": 2})
BITMAP_WORD = FGRAPH_WORD.extend("fgraph bitmap word", {"index": 16})
DATA_WORD = FGRAPH_WORD.extend("fgraph data word", {"data": 5, "data_index": 4})
FGRAPH_TYPE_RESERVED, FGRAPH_TYPE_BITMAP, FGRAPH_TYPE_DATA = 0, 1, 2
FGRAPH_RET_INDEX_BIT = 1  # BIT(0): always set in a pushed frame's bitmap (the tail-call flag)
_OFFSET_MASK = FGRAPH_WORD.mask("frame_offset")
_TYPE_SHIFT, _TYPE_MASK = FGRAPH_WORD.shift("type"), FGRAPH_WORD.mask("type")
_INDEX_SHIFT, _INDEX_MASK = BITMAP_WORD.shift("index"), BITMAP_WORD.mask("index")
_DATA_SHIFT, _DATA_MASK = DATA_WORD.shift("data"), DATA_WORD.mask("data")
_DATA_INDEX_SHIFT, _DATA_INDEX_MASK = DATA_WORD.shift("data_index"), DATA_WORD.mask("data_index")


# fgraph.c's accessors of those words, by its names (without the leading underscores)
def get_offset(val: int) -> int:
    return val & _OFFSET_MASK


def get_type(val: int) -> int:
    return val >> _TYPE_SHIFT & _TYPE_MASK


def get_bitmap_bits(val: int) -> int:
    return val >> _INDEX_SHIFT & _INDEX_MASK


def get_data_index(val: int) -> int:
    return val >> _DATA_INDEX_SHIFT & _DATA_INDEX_MASK


def get_data_size(val: int) -> int:
    """In words."""
    return (val >> _DATA_SHIFT & _DATA_MASK) + 1


def make_bitmap_type_val(bitmap: int, offset: int) -> int:
    """The word set_bitmap() writes (offset: FGRAPH_FRAME_OFFSET)."""
    return bitmap << _INDEX_SHIFT | FGRAPH_TYPE_BITMAP << _TYPE_SHIFT | offset


def make_data_type_val(idx: int, size: int, offset: int) -> int:
    return idx << _DATA_INDEX_SHIFT | (size - 1) << _DATA_SHIFT | FGRAPH_TYPE_DATA << _TYPE_SHIFT | offset


def asm_constants(karch) -> dict[str, int]:
    """The layouts of fgraph's task state and frames, for guest code that pushes and pops them."""
    frame, push = FTRACE_RET_STACK[karch.fgraph.fp_test], GUEST_PUSH[karch.fgraph.fp_test]
    return {
        **FG_CONTROL.asm_constants("FG_"),
        **frame.asm_constants("FG_FRAME_"),
        **push.asm_constants("FG_PUSH_"),
        **BITMAP_WORD.asm_constants("FGRAPH_"),
        **DATA_WORD.asm_constants("FGRAPH_"),
        "FG_FRAME_WORDS": frame.nr_words,
        "FG_PUSH_WORDS": push.nr_words,
        "FG_MAX_OFFSET": shadow_stack_max_offset(karch.fgraph.fp_test),
    }


@dataclass(slots=True)
class FtraceGraphEnt:
    func: int  # the patch-site ip of the function
    depth: int


@dataclass(slots=True)
class FtraceGraphRet:
    func: int
    depth: int
    retval: int
    overrun: int


@dataclass(eq=False)
class FgraphOps:
    """struct fgraph_ops. `filter`/`notrace` are set_ftrace_filter globs, as for an ftrace_ops.
    `guest` names guest code doing what entryfunc/retfunc do, used when this is the only user."""

    entryfunc: Callable[[FtraceGraphEnt, FgraphOps, FtraceRegs], int]
    retfunc: Callable[[FtraceGraphRet, FgraphOps, FtraceRegs], None] | None = None
    name: str = "fgraph_ops"
    ops: FtraceOps = field(default_factory=lambda: FtraceOps(None))  # its filter hashes
    idx: int = -1
    guest: tuple[int, int] | None = None  # (entry, return) addresses


@dataclass(slots=True)
class _Frame:
    index: int  # word index of struct ftrace_ret_stack
    ret: int
    func: int
    fp: int
    retp: int
    bitmap: int


class Fgraph:
    def __init__(self, ftrace: Ftrace, kernel: KernelVersion = MODELLED):
        """kernel: the release whose return_to_handler hooks returns (FgraphArch.return_to_handlers:
        on x86 what its ftrace_regs holds changed in 6.18 and 7.0)."""
        self.ftrace, self.m = ftrace, ftrace.m
        self.karch = karch = ftrace.karch
        self.design = design = karch.fgraph.return_to_handler(kernel)
        self.exit_saved = design.saved  # what the exit's ftrace_regs holds
        syms = karch.load(self.m, design.source, RETURN_ARGS.asm_constants("RETURN_ARGS_"))
        self.return_to_handler = syms["return_to_handler"]
        self._fregs_arg = self.m.mailbox(syms["ftrace_return_to_handler"], syms["return_args"], RETURN_ARGS)
        self.m.hook_call(self._return, syms["ftrace_return_to_handler_lab"])
        self._return_call = syms["return_to_handler_call"]  # patchable: the exit's callee
        self._return_target = syms["ftrace_return_to_handler"]
        self._python_return = syms["ftrace_return_to_handler"]
        frame = self._frame_layout = FTRACE_RET_STACK[karch.fgraph.fp_test]
        self.frame_words = frame.nr_words  # FGRAPH_FRAME_OFFSET
        self.max_offset = shadow_stack_max_offset(karch.fgraph.fp_test)
        self._has_fp = "fp" in frame.offsets  # kept only where it is checked
        self._frame_fields = frame.getter("ret", "func", *("fp",) * self._has_fp, "retp")
        self._retp_is_sp = karch.fgraph.retp == "sp"
        self.array: list[FgraphOps | None] = [None] * FGRAPH_ARRAY_SIZE
        self._lru_table = list(range(FGRAPH_ARRAY_SIZE))  # fgraph_lru_init
        self._lru_next = self._lru_last = 0
        self._users: list[FgraphOps] = []  # the registered ones, in index order
        self.graph_ops = FtraceOps(self._entry, name="graph_ops")
        self.ret_stack = self.m.alloc("lab data", SHADOW_STACK_SIZE, 4096)
        self.stack = self.m.view(self.ret_stack, SHADOW_STACK_SIZE)
        self.control = self.m.alloc("lab data", FG_CONTROL.size, 64)
        self._ctl = self.m.view(self.control, FG_CONTROL.size).cast("Q")
        self._put_ctl(
            curr=0,
            depth=(1 << 64) - 1,
            max_depth=(1 << 64) - 1,
            overrun=0,
            stack=self.ret_stack,
            return_to_handler=self.return_to_handler,
        )
        self._reserving: tuple[int, list] | None = None  # (gops idx, frame data) during entryfunc
        self._retrieving: _Frame | None = None
        self.verify = ftrace.verify  # the exit's snapshot stands at return_to_handler
        self.verify.add(self, "fgraph", lambda: (self.return_to_handler,))
        self.m.on_abandoned_call(self.exit_task)

    def _ctl_get(self, name: str) -> int:
        return self._ctl[FG_CONTROL.index(name)]

    def _put_ctl(self, **values) -> None:
        for name, value in values.items():
            self._ctl[FG_CONTROL.index(name)] = value & MASK64

    @property
    def curr_ret_stack(self) -> int:
        return self._ctl[CURR]

    @curr_ret_stack.setter
    def curr_ret_stack(self, value: int) -> None:
        self._ctl[CURR] = value

    @property
    def curr_ret_depth(self) -> int:
        depth = self._ctl[DEPTH]
        return depth - (1 << 64) if depth >> 63 else depth

    @curr_ret_depth.setter
    def curr_ret_depth(self, value: int) -> None:
        self._ctl[DEPTH] = value & MASK64

    @property
    def trace_overrun(self) -> int:
        return self._ctl_get("overrun")

    @trace_overrun.setter
    def trace_overrun(self, value: int) -> None:
        self._put_ctl(overrun=value)

    def set_max_depth(self, depth: int) -> None:
        """The guest fast path's max_graph_depth (0: none)."""
        self._put_ctl(max_depth=depth or MASK64)

    def empty_shadow_stack(self) -> NoReturn:
        """return_to_handler with no frame to pop (ftrace_pop_return_trace's WARN): both paths stop here."""
        raise FtlabError("fgraph: return_to_handler reached with an empty shadow stack")

    def bad_frame_pointer(self) -> None:
        raise FtlabError("fgraph: bad frame pointer on return (the guest fast path's FP test failed)")

    # -- registration (register_ftrace_graph) -----------------------------------------------------

    def _lru_alloc_index(self) -> int:
        """fgraph_lru_alloc_index: the index released longest ago (-1: none free)."""
        idx = self._lru_table[self._lru_next]
        if idx == -1:
            return -1
        self._lru_table[self._lru_next] = -1
        self._lru_next = (self._lru_next + 1) % FGRAPH_ARRAY_SIZE
        return idx

    def _lru_release_index(self, idx: int) -> None:
        """fgraph_lru_release_index: `idx` goes to the back of the queue."""
        self._lru_table[self._lru_last] = idx
        self._lru_last = (self._lru_last + 1) % FGRAPH_ARRAY_SIZE

    def register(self, gops: FgraphOps) -> None:
        if gops in self.array:
            raise FtlabError(f"fgraph_ops '{gops.name}' is already registered")
        idx = self._lru_alloc_index()
        if idx < 0:
            raise FtlabError(f"fgraph: all {FGRAPH_ARRAY_SIZE} fgraph_ops slots are in use")
        gops.idx = idx
        self.array[idx] = gops
        self._put(SHADOW_STACK_TASK_VARS + idx, 0)  # its task var (init_task_vars)
        self._update_graph_ops()

    def unregister(self, gops: FgraphOps) -> None:
        if gops not in self.array:
            raise FtlabError(f"fgraph_ops '{gops.name}' is not registered")
        self._lru_release_index(gops.idx)
        self.array[gops.idx] = None
        gops.idx = -1
        self._update_graph_ops()

    def _update_graph_ops(self) -> None:
        """graph_ops traces the union of what its users trace (the kernel's subops manager). A lone
        user with guest code runs there, entry and exit, with no Python per call."""
        self._users = [g for g in self.array if g is not None]
        users, ft = self._users, self.ftrace
        # the kernel registers graph_ops with the first user and only updates its hash after that
        # (ftrace_startup_subops): it keeps its place in ftrace_ops_list, which decides its turn
        place = ft.ops.index(self.graph_ops) if self.graph_ops in ft.ops else None
        if place is not None:
            ft.unregister(self.graph_ops)
        lone = users[0] if len(users) == 1 and users[0].guest else None
        self.graph_ops.guest_func = lone.guest[0] if lone else None
        if lone:
            push = GUEST_PUSH[self.karch.fgraph.fp_test]
            self._put_ctl(
                header=make_data_type_val(lone.idx, push.index("header") - push.index("data"), push.index("header")),
                bitmap=make_bitmap_type_val(1 << lone.idx | FGRAPH_RET_INDEX_BIT, push.index("bitmap")),
            )
        target = lone.guest[1] if lone else self._python_return
        if target != self._return_target:
            encode = self.karch.sites.encode_call
            self.m.patch(
                self._return_call, encode(self._return_call, self._return_target), encode(self._return_call, target)
            )
            self._return_target = target
        if not users:
            return
        everything = any(not g.ops.filter for g in users)
        self.graph_ops.filter = set() if everything else set().union(*(g.ops.filter for g in users))
        self.graph_ops.notrace = set.intersection(*(g.ops.notrace for g in users))
        ft.register(self.graph_ops, at=place)

    def exit_task(self) -> None:
        """ftrace_graph_exit_task: the task's calls under way are gone, and their frames with them. The
        next call starts on an empty shadow stack, as ftrace_graph_init_task leaves a new task's
        (kernel/trace/fgraph.c, torvalds/linux f76ad354146d)."""
        self.curr_ret_stack = 0
        self.curr_ret_depth = -1

    # -- the shadow stack -------------------------------------------------------------------------

    def _word(self, index: int) -> int:
        return WORD.unpack_from(self.stack, 8 * index)[0]

    def _put(self, index: int, value: int) -> None:
        WORD.pack_into(self.stack, 8 * index, value)

    def reserve_data(self, size: int) -> int | None:
        """fgraph_reserve_data: guest address of `size` bytes kept until this frame's return, the
        data's header word above them (None if called outside an entryfunc, twice, too large, or
        the stack is full)."""
        if self._reserving is None or size > FGRAPH_MAX_DATA_SIZE or size <= 0:
            return None
        idx, reserved = self._reserving
        if reserved:
            return None
        words = -(-size // 8)
        curr = self.curr_ret_stack
        below = self._word(curr - 1)  # the bitmap word, or the header of the data below
        data = curr
        curr += words + 1
        if curr >= self.max_offset:
            return None
        self._put(curr - 1, make_data_type_val(idx, words, get_offset(below) + words + 1))
        self.curr_ret_stack = curr
        reserved.append(data)
        return self.ret_stack + 8 * data

    def retrieve_data(self) -> tuple[int, int] | None:
        """fgraph_retrieve_data, in a retfunc: (address, size in bytes, rounded up to words) of
        what its entryfunc reserved, or None: the headers from the top of the frame down."""
        if self._retrieving is None or (gops := self._current) is None:
            return None
        offset = self.curr_ret_stack - 1
        while get_type(val := self._word(offset)) == FGRAPH_TYPE_DATA:
            if get_data_index(val) == gops.idx:
                return self.ret_stack + 8 * (offset - get_data_size(val)), 8 * get_data_size(val)
            offset -= get_data_size(val) + 1
        return None

    def task_var(self, gops: FgraphOps) -> int:
        """fgraph_get_task_var: the address of this user's per-task word."""
        return self.ret_stack + 8 * (SHADOW_STACK_TASK_VARS + gops.idx)

    def _frames(self):
        """The frames on the shadow stack, innermost first (get_ret_stack, as unwinders walk them)."""
        offset = self.curr_ret_stack
        while offset > 0:
            offset -= 1 + get_offset(self._word(offset - 1))
            yield self._frame(offset)

    def _frame(self, start: int) -> _Frame:
        ret, func, *fp, retp = self._frame_fields(self._frame_layout.codec.unpack_from(self.stack, 8 * start))
        bitmap = get_bitmap_bits(self._word(start + self.frame_words))
        return _Frame(start, ret, func, fp[0] if fp else 0, retp, bitmap)

    def ret_addr(self, ret: int, retp: int) -> int:
        """ftrace_graph_ret_addr: undo the hook for an unwinder that found `ret` at `retp`; a tail
        call's frames share a retp, and all but the outermost hold return_to_handler."""
        if ret != self.return_to_handler:
            return ret
        hook = self.return_to_handler
        return next((f.ret for f in self._frames() if f.retp == retp and f.ret != hook), ret)

    # -- entry (ftrace_graph_func, function_graph_enter_regs) -------------------------------------

    def _entry(self, ip: int, parent_ip: int, op, fregs: FtraceRegs) -> None:
        """ftrace_graph_func: function_graph_enter_regs, then hook the return. Its first step is
        ftrace_test_recursion_trylock(func, ret) (kernel/trace/fgraph.c since 6.14, "fgraph: Get
        ftrace recursion lock in function_graph_enter"; before, x86's ftrace_graph_func took it and
        arm64's took none): one nested entry gets through on the transition bit, the next is
        refused before any user sees it and recorded in recursed_functions."""
        recursion = self.ftrace.recursion
        bit = recursion.trylock(ip, parent_ip, recursion.FTRACE_START)
        if bit < 0:
            return
        try:
            if self._enter(ip, fregs) == 0:
                fregs.set_return_address(self.return_to_handler)
        finally:
            recursion.unlock(bit)

    def _enter(self, func: int, fregs: FtraceRegs) -> int:
        """function_graph_enter_regs: push the frame and a reserved word (ftrace_push_return_trace),
        ask each user in index order, then make that word the bitmap of those that want the return,
        BIT(0) included."""
        ret = fregs.get_return_address()
        fp = fregs.get_frame_pointer()
        retp = fregs.get_stack_pointer() if self._retp_is_sp else fp
        ctl = self._ctl
        start, depth = ctl[CURR], ctl[DEPTH]
        if start + self.frame_words + 1 >= self.max_offset:
            self.trace_overrun += 1
            return -1
        depth = (depth + 1) & MASK64  # from -1 (u64) when the stack is empty
        frame = (ret, func, fp, retp) if self._has_fp else (ret, func, retp)  # FTRACE_RET_STACK's order
        self._frame_layout.codec.pack_into(self.stack, 8 * start, *frame)
        offset = start + self.frame_words
        self._put(offset, FGRAPH_TYPE_RESERVED << _TYPE_SHIFT | self.frame_words)
        ctl[CURR], ctl[DEPTH] = offset + 1, depth
        trace, bitmap = FtraceGraphEnt(func, depth), 0
        for gops in self._users:
            save_curr_ret_stack = ctl[CURR]
            self._reserving = (gops.idx, [])
            try:
                wanted = gops.ops.traces(func) and gops.entryfunc(trace, gops, fregs)
            finally:
                self._reserving = None
            if wanted:
                bitmap |= 1 << gops.idx
            else:
                ctl[CURR] = save_curr_ret_stack  # its reserved data is discarded
        if not bitmap:
            ctl[CURR], ctl[DEPTH] = start, (depth - 1) & MASK64
            return -1
        self._put(offset, make_bitmap_type_val(bitmap | FGRAPH_RET_INDEX_BIT, self.frame_words))
        return 0

    # -- exit (return_to_handler -> ftrace_return_to_handler) -------------------------------------

    _current: FgraphOps | None = None

    def exit_fregs(self, fregs_addr: int, ret: int) -> FtraceRegs:
        """The ftrace_regs return_to_handler built for a return to `ret`; with verify mode, the
        true registers there, the ip meaning the real return address."""
        truth = self.verify.take(self.return_to_handler)
        pc = self.karch.cpu.pc
        return FtraceRegs(self.karch, self.m, fregs_addr, truth, {pc: ret} if truth else None, saved=self.exit_saved)

    def _return(self, _addr: int) -> None:
        fregs_addr = self._fregs_arg[FREGS_ARG]
        ctl = self._ctl
        top, depth, overrun = ctl[CURR], ctl[DEPTH], ctl[OVERRUN]
        if top <= 0:
            self.empty_shadow_stack()
        frame = self._frame(top - 1 - get_offset(self._word(top - 1)))  # get_ret_stack
        karch = self.karch
        karch.check_call_alignment(
            self.m, lambda: karch.describe(self.design.source, "return_to_handler"), "ftrace_return_to_handler"
        )
        fregs = self.exit_fregs(fregs_addr, frame.ret)
        if karch.fgraph.fp_test and frame.fp != fregs.get_frame_pointer():
            raise FtlabError(
                f"fgraph: bad frame pointer returning from {self.m.symbols.name(frame.func)}: "
                f"expected {frame.fp:#x}, received {fregs.get_frame_pointer():#x}"
            )
        fregs.set_instruction_pointer(frame.ret)
        trace = FtraceGraphRet(frame.func, depth, fregs.get_return_value(), overrun)
        self._retrieving = frame
        try:
            # the users whose bit is set, in index order (for_each_set_bit; a lone user's static
            # call tests its own bit): BIT(0) is set in every frame, so user 0 is always called
            for gops in self._users:
                if frame.bitmap >> gops.idx & 1 and gops.retfunc is not None:
                    self._current = gops
                    gops.retfunc(trace, gops, fregs)
        finally:
            self._retrieving = self._current = None
            ctl[CURR], ctl[DEPTH] = frame.index, (depth - 1) & MASK64
