"""fgraph's shadow stack holds the kernel's words in the kernel's order: each frame is struct
ftrace_ret_stack, then the bitmap word (BIT(0) always set), then each user's reserved data under
its header word; the limits are SHADOW_STACK_MAX_OFFSET's; user slots come from the LRU table.

The reference below is kernel/trace/fgraph.c (gregkh/linux 000aa47a5123: the 6.11+ layout, its
frame without calltime since 6.13's commit f1f36e22bee9, as 6.17 keeps it) re-written in Python
from the source, independently of tracers/core/fgraph.py:
ftrace_push_return_trace, function_graph_enter_regs, fgraph_reserve_data,
fgraph_retrieve_parent_data, get_ret_stack, set_bitmap, fgraph_lru_alloc_index and
fgraph_lru_release_index."""

import struct
from dataclasses import dataclass

import pytest

from tracers.core.fgraph import FgraphOps

SHADOW_STACK_SIZE = 4096
SHADOW_STACK_OFFSET = SHADOW_STACK_SIZE // 8
FGRAPH_ARRAY_SIZE = 16
FGRAPH_FRAME_OFFSET_MASK = (1 << 10) - 1
FGRAPH_TYPE_SHIFT = 10
FGRAPH_TYPE_RESERVED, FGRAPH_TYPE_BITMAP, FGRAPH_TYPE_DATA = 0, 1, 2
FGRAPH_INDEX_SHIFT = FGRAPH_DATA_SHIFT = 12
FGRAPH_DATA_INDEX_SHIFT = 17
FGRAPH_MAX_DATA_SIZE = 8 * (1 << 5)


def frame_offset(karch) -> int:
    """FGRAPH_FRAME_OFFSET: struct ftrace_ret_stack {ret, func, [fp if HAVE_FUNCTION_GRAPH_FP_TEST], retp}."""
    return 4 if karch.fgraph.fp_test else 3


def max_offset(karch) -> int:
    """SHADOW_STACK_MAX_OFFSET."""
    return SHADOW_STACK_OFFSET - (frame_offset(karch) + 1 + FGRAPH_ARRAY_SIZE)


def make_data_type_val(idx, size, offset):
    return (idx << FGRAPH_DATA_INDEX_SHIFT) | ((size - 1) << FGRAPH_DATA_SHIFT) | (FGRAPH_TYPE_DATA << 10) | offset


def data_size(val):
    return ((val >> FGRAPH_DATA_SHIFT) & 31) + 1


@dataclass
class User:
    """A test user: reserves `reserve` bytes (0: none), fills them with its own pattern, and wants
    the return of `wants` (None: of every function). `only` is its ftrace filter."""

    name: str
    reserve: int = 0
    wants: frozenset | None = None
    only: str | None = None
    idx: int = -1

    def pattern(self, depth: int, word: int) -> int:
        return 0xD0000000 | self.idx << 16 | depth << 8 | word


class KernelShadowStack:
    """The task's ret_stack, curr_ret_stack, curr_ret_depth, as fgraph.c changes them."""

    def __init__(self, karch):
        self.fo, self.max = frame_offset(karch), max_offset(karch)
        self.fp_test = karch.fgraph.fp_test
        self.ret_stack = [0] * SHADOW_STACK_OFFSET
        self.curr_ret_stack, self.curr_ret_depth = 0, -1

    def push_return_trace(self, ret, func, fp, retp) -> int:
        val = (FGRAPH_TYPE_RESERVED << FGRAPH_TYPE_SHIFT) | self.fo
        if self.curr_ret_stack + self.fo + 1 >= self.max:
            return -1  # trace_overrun
        offset = self.curr_ret_stack
        self.ret_stack[offset : offset + self.fo] = [ret, func, fp, retp] if self.fp_test else [ret, func, retp]
        offset += self.fo
        self.ret_stack[offset] = val
        self.curr_ret_stack = offset + 1
        return offset

    def reserve_data(self, idx, size_bytes) -> int | None:
        if size_bytes > FGRAPH_MAX_DATA_SIZE:
            return None
        size = (size_bytes + 7) >> 3
        curr = self.curr_ret_stack
        val = self.ret_stack[curr - 1]
        data = curr
        curr += size + 1
        if curr >= self.max:
            return None
        self.ret_stack[curr - 1] = make_data_type_val(idx, size, (val & FGRAPH_FRAME_OFFSET_MASK) + size + 1)
        self.curr_ret_stack = curr
        return data

    def enter(self, ret, func, name, fp, retp, users) -> None:
        """function_graph_enter_regs with more than one user (the for_each_set_bit loop)."""
        self.curr_ret_depth += 1
        depth = self.curr_ret_depth
        offset = self.push_return_trace(ret, func, fp, retp)
        if offset < 0:
            self.curr_ret_depth -= 1
            return
        bitmap = 0
        for u in sorted(users, key=lambda u: u.idx):
            save = self.curr_ret_stack
            if u.only in (None, name) and self._entryfunc(u, name, depth):
                bitmap |= 1 << u.idx
            else:
                self.curr_ret_stack = save
        if not bitmap:
            self.curr_ret_stack -= self.fo + 1
            self.curr_ret_depth -= 1
            return
        bitmap |= 1  # BIT(0)
        self.ret_stack[offset] = (bitmap << FGRAPH_INDEX_SHIFT) | (FGRAPH_TYPE_BITMAP << FGRAPH_TYPE_SHIFT) | self.fo

    def _entryfunc(self, u, name, depth) -> bool:
        if u.reserve:
            data = self.reserve_data(u.idx, u.reserve)
            if data is None:
                return False
            for i in range((u.reserve + 7) // 8):
                self.ret_stack[data + i] = u.pattern(depth, i)
        return u.wants is None or name in u.wants

    def get_ret_stack(self, offset) -> int:
        offset -= 1
        return offset - (self.ret_stack[offset] & FGRAPH_FRAME_OFFSET_MASK)

    def retrieve_data(self, idx) -> tuple[int, int] | None:
        offset = self.curr_ret_stack - 1
        while (val := self.ret_stack[offset]) >> FGRAPH_TYPE_SHIFT & 3 == FGRAPH_TYPE_DATA:
            if val >> FGRAPH_DATA_INDEX_SHIFT & 15 == idx:
                return offset - data_size(val), 8 * data_size(val)
            offset -= data_size(val) + 1
        return None

    def pop_to(self, depth) -> None:
        """Return from the frames above `depth` (__ftrace_return_to_handler, innermost first)."""
        while self.curr_ret_depth > depth:
            self.curr_ret_stack = self.get_ret_stack(self.curr_ret_stack)
            self.curr_ret_depth -= 1


def _words(lab, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}Q", lab.machine.read(lab.fgraph.ret_stack, 8 * n)))


def run_against_the_kernel(lab, users, func, arg):
    """Register `users` (the first one unfiltered: it drives the reference), call func(arg), and
    compare the whole shadow stack with the reference's at every entry and every return."""
    fg, m, karch = lab.fgraph, lab.machine, lab.karch
    ref, checks = KernelShadowStack(karch), []

    def compare(n: int) -> None:
        assert ref.curr_ret_stack == n
        assert _words(lab, n) == ref.ret_stack[:n]
        checks.append(n)

    def entry(u):
        def entryfunc(trace, gops, fregs):
            name = m.symbols.lookup(trace.func)[0].name
            if u is users[0]:  # the first called: the frame and its reserved word are pushed
                ref.pop_to(trace.depth - 1)
                compare(fg.curr_ret_stack - ref.fo - 1)
                fp = fregs.get_frame_pointer()
                retp = fregs.get_stack_pointer() if karch.fgraph.retp == "sp" else fp
                ref.enter(fregs.get_return_address(), trace.func, name, fp, retp, users)
            if u.reserve:
                addr = fg.reserve_data(u.reserve)
                if addr is None:
                    return 0
                for i in range((u.reserve + 7) // 8):
                    m.write(addr + 8 * i, struct.pack("<Q", u.pattern(trace.depth, i)))
            return u.wants is None or name in u.wants

        return entryfunc

    def ret(u):
        def retfunc(trace, gops, fregs):
            ref.pop_to(trace.depth)
            compare(fg.curr_ret_stack)
            expected = ref.retrieve_data(u.idx)
            got = fg.retrieve_data()
            assert got == (expected and (fg.ret_stack + 8 * expected[0], expected[1]))

        return retfunc

    ops = [FgraphOps(entry(u), ret(u), name=u.name) for u in users]
    for u, g in zip(users, ops, strict=True):
        fg.register(g)
        u.idx = g.idx
        if u.only:
            lab.ftrace.set_filter(g.ops, u.only)
    lab.call(func, arg)
    for g in ops:
        fg.unregister(g)
    assert fg.curr_ret_stack == 0 and fg.curr_ret_depth == -1
    return checks


SCENARIOS = {
    "one user with data": [User("a", reserve=16)],
    "one user without": [User("a")],
    "several, some data, some declining": [
        User("log", reserve=16),
        User("one word", reserve=3, wants=frozenset({"chain_c", "fib"})),
        User("none"),
        User("chain_b only", reserve=24, only="chain_b"),
        User("declines", reserve=8, wants=frozenset()),
    ],
    "large reservations": [
        User("big", reserve=FGRAPH_MAX_DATA_SIZE),
        User("mid", reserve=64, wants=frozenset({"fib"})),
    ],
}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("func,arg", [("chain_a", 10), ("fib", 7)])
def test_every_word_is_the_kernels(lab, scenario, func, arg):
    """Frame, bitmap word (with BIT(0)), data and data headers, word by word, at every entry and
    every return; what fgraph_retrieve_data finds, for each user."""
    users = [User(u.name, u.reserve, u.wants, u.only) for u in SCENARIOS[scenario]]
    assert len(run_against_the_kernel(lab, users, func, arg)) > 4


def test_the_kernels_dump_of_one_frame(lab):
    """The audit's dump: ret, func, [fp,] retp, then the bitmap word (BIT(0) only, for user 0),
    then 2 words of data under their header, 6 (or 7) words above the frame."""
    fg, seen = lab.fgraph, []

    def entryfunc(trace, gops, fregs):
        assert fg.reserve_data(16) is not None
        return 1

    def retfunc(trace, gops, fregs):
        seen.append(_words(lab, fg.curr_ret_stack)[-4:])

    gops = FgraphOps(entryfunc, retfunc)
    fg.register(gops)
    lab.ftrace.set_filter(gops.ops, "chain_c")
    lab.call("chain_c", 1)
    fo = frame_offset(lab.karch)
    bitmap, _, _, header = seen[0]
    assert (bitmap, header) == (0x1400 | fo, 0x1800 | (fo + 3))  # x86_64: 0x1403 ... 0x1806


def test_limits_are_shadow_stack_max_offset(lab):
    """A frame and its bitmap word must stay below SHADOW_STACK_MAX_OFFSET (which keeps a frame's
    room under the 16 task vars), else trace_overrun; reserved data must too, else NULL."""
    fg, fo, top = lab.fgraph, frame_offset(lab.karch), max_offset(lab.karch)
    got = []

    def entryfunc(trace, gops, fregs):
        got.append(fg.reserve_data(8))
        return 1

    gops = FgraphOps(entryfunc, lambda t, g, f: None)
    fg.register(gops)
    lab.ftrace.set_filter(gops.ops, "chain_c")
    # (words in use below, whether the frame is pushed, whether its 8 bytes of data fit)
    for start, reserved in [
        (top - fo - 1, []),
        (top - fo - 2, [False]),
        (top - fo - 3, [False]),
        (top - fo - 4, [True]),
    ]:
        got.clear()
        fg.curr_ret_stack = start
        lab.call("chain_c", 1)
        assert [addr is not None for addr in got] == reserved
        assert fg.trace_overrun == 1 and fg.curr_ret_stack == start
    assert fg.task_var(gops) == fg.ret_stack + 8 * (SHADOW_STACK_OFFSET - FGRAPH_ARRAY_SIZE + gops.idx)


class KernelLru:
    """fgraph_lru_table, fgraph_lru_next, fgraph_lru_last."""

    def __init__(self):
        self.table, self.next, self.last = list(range(FGRAPH_ARRAY_SIZE)), 0, 0

    def alloc(self) -> int:
        idx = self.table[self.next]
        if idx == -1:
            return -1
        self.table[self.next] = -1
        self.next = (self.next + 1) % FGRAPH_ARRAY_SIZE
        return idx

    def release(self, idx: int) -> None:
        self.table[self.last] = idx
        self.last = (self.last + 1) % FGRAPH_ARRAY_SIZE


def test_user_slots_come_from_the_lru_table(lab):
    """A released index goes to the back of the queue: the next user gets the one free longest."""
    fg, lru, live = lab.fgraph, KernelLru(), {}
    steps = ["+a", "+b", "+c", "-b", "+d", "-a", "+e", "-c", "-d"] + [f"+u{i}" for i in range(15)] + ["-e", "+f"]
    for step in steps:
        name = step[1:]
        if step[0] == "+":
            live[name] = FgraphOps(lambda t, g, f: 0, name=name)
            fg.register(live[name])
            assert live[name].idx == lru.alloc(), step
        else:
            lru.release(live[name].idx)
            fg.unregister(live.pop(name))
    assert len(live) == FGRAPH_ARRAY_SIZE and lru.alloc() == -1
    with pytest.raises(Exception, match="all 16 fgraph_ops slots are in use"):
        fg.register(FgraphOps(lambda t, g, f: 0))


def test_bit_zero_is_always_set_and_its_user_called(lab):
    """function_graph_enter_regs sets BIT(0) in every frame's bitmap: with several users, the one
    at index 0 gets the return callback of every hooked frame, even of one it declined; a lone
    user (the static call) is called only for its own bit."""
    fg, calls = lab.fgraph, []
    first = FgraphOps(lambda t, g, f: 0, lambda t, g, f: calls.append("first"), name="first")
    second = FgraphOps(lambda t, g, f: 1, lambda t, g, f: calls.append("second"), name="second")
    fg.register(first)
    fg.register(second)
    lab.ftrace.set_filter(second.ops, "chain_c")
    lab.call("chain_c", 1)
    assert (first.idx, second.idx, calls) == (0, 1, ["first", "second"])
    fg.unregister(first)
    calls.clear()
    lab.call("chain_c", 1)  # second alone, at index 1: BIT(1) | BIT(0)
    assert calls == ["second"]
