"""One hit, instruction by instruction: every instruction the lab's kernel code runs from a patch
site (or breakpoint) through the trampoline, the dispatch and any return hook, and back into the
traced code, with the registers each changed and the memory each stored, named by the struct and
field it fills.

A walk is watched with a per-instruction hook on the lab's kernel code alone (the trampolines, the
exception entry, kprobe slots) and on the hit's site, a block hook that notices when execution
leaves that code, and memory hooks; the traced code between walks runs without per-instruction
hooks. The stores are the ones the guest made: what the lab's Python handlers write is not an
instruction, and the step where Python is entered says so instead.

Which struct a store fills is found from the guest too: a struct's address is what the guest
passed for it (the pointer it left in a Python entry's mailbox, the ftrace_regs argument at
ftrace_call), and the ring buffer's records and fgraph's shadow stack are where their cores keep
them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator import asm
from emulator.layout import Layout

from ..core.fgraph import FG_CONTROL, GUEST_PUSH
from ..core.ring_buffer import RB_CONTROL
from ..output.records import REC_ENTRY, REC_EXIT

if TYPE_CHECKING:
    from ..lab import Lab

SINGLE_STEP = "single-step"  # a kprobe's copied instruction, run in its slot


@dataclass
class Access:
    """A load or store one instruction made; `struct`/`field` name what the memory is, when known."""

    addr: int
    size: int
    value: int
    old: int | None = None  # what a store overwrote
    struct: str | None = None
    field: str | None = None

    @property
    def what(self) -> str:
        return f"{self.struct}.{self.field}" if self.struct else ""


@dataclass
class Step:
    addr: int
    sym: str
    insn: str
    size: int
    before: list[int]
    after: list[int] | None = None
    stores: list[Access] = field(default_factory=list)
    loads: list[Access] = field(default_factory=list)
    python: str | None = None  # the kernel function the lab's Python stands for, entered at this step
    phase: str = ""
    is_call: bool = False
    is_return: bool = False
    single_step: bool = False  # in a kprobe's slot (its copied instruction, or the breakpoint after it)

    def changed(self, names: list[str], skip: str) -> dict[str, tuple[int, int]]:
        """The registers this instruction changed: name -> (old, new)."""
        if self.after is None:
            return {}
        return {
            n: (old, new)
            for n, old, new in zip(names, self.before, self.after, strict=True)
            if old != new and n != skip
        }


@dataclass
class Walk:
    kind: str  # 'entry' (from the site) or 'return' (from the hooked return)
    steps: list[Step] = field(default_factory=list)
    landing: int | None = None  # where execution went on, outside the lab's kernel code


@dataclass(frozen=True)
class StructAt:
    """A struct instance the walk touched: its address, layout and the name to show."""

    addr: int
    layout: Layout
    name: str

    def field_at(self, addr: int) -> str | None:
        off = addr - self.addr
        if not 0 <= off < self.layout.size:
            return None
        return next((n for n, o in self.layout.offsets.items() if o <= off < o + 8), f"+{off:#x}")


@dataclass
class Hit:
    """One mechanism's hit as `ftlab step` shows it: the lab, the mechanism's title and what its
    snapshot means there (the release's or the site kind's, when the lab says), where it stands,
    the walks, and the column it is shown in."""

    lab: Lab
    title: str
    note: str | None
    at: str
    recorder: StepRecorder
    column: str = ""


class StepRecorder:
    """Watches one hit of a mechanism while calls run (a context manager around them).

    `start` is the hit's first instruction (the site's first byte or the breakpoint), `window` the
    site's bytes; `returns`: the mechanism hooks the function's return, so the walk back through
    the return hook is kept too: the first one after an entry, and the entry walk it belongs to
    (the latest before it, as returns come innermost first)."""

    def __init__(self, lab, start: int, window: int, returns: bool, names: Callable[[int], str | None] | None = None):
        self.lab, self.m = lab, lab.machine
        self.start, self.window, self.returns = start, window, returns
        self.names = names or (lambda addr: None)
        self.regs = list(self.m.arch.regs)
        self._batch = self.m.register_batch(self.regs)
        base, size = self.m.LAB_TEXT
        self.lo, self.hi = self.m.kernel_text, base + size
        self.walks: list[Walk] = []
        self._walk: Walk | None = None
        self.entry: Walk | None = None
        self._done = False
        self._handles: list = []
        self.record_layouts: dict = {}  # record type -> layout, for a built-in tracer's records (use_records)

    # -- watching --------------------------------------------------------------------------------

    def __enter__(self) -> StepRecorder:
        m = self.m
        self._handles = m.watch(
            self._on_block, self._on_access, self._on_insn, [(self.lo, self.hi - 1), (self.start, self.window - 1)]
        )
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            self.m.unhook(handle)
        if self._walk is not None:  # the run ended inside a walk (at the top-level caller)
            self._end(None)

    def _in_kernel_code(self, addr: int) -> bool:
        return self.lo <= addr < self.hi

    def _on_insn(self, addr: int) -> None:
        if self._done:
            return
        regs = self._batch.read()
        walk = self._walk
        if walk is None:
            if addr == self.start:
                walk = self._walk = Walk("entry")
            elif self._in_kernel_code(addr) and self.returns and self.entry is not None:
                walk = self._walk = Walk("return")
            else:
                return
        elif walk.steps:
            walk.steps[-1].after = regs
        m = self.m
        code = m.read(addr, 16)
        insn = asm.decode(m.arch, code, addr)
        slot = self.names(addr)
        sym = slot or m.symbols.name(addr)
        python = m.symbols.name(addr) if addr in m.python_entries else None
        walk.steps.append(
            Step(
                addr,
                sym,
                m.disasm(addr),
                insn.size,
                regs,
                python=python,
                is_call=asm.is_call(insn),
                is_return=asm.is_return(insn),
                single_step=slot is not None,
            )
        )

    def _on_block(self, addr: int) -> None:
        walk = self._walk
        if walk is None or self._in_kernel_code(addr) or self.start <= addr < self.window:
            return
        self._end(addr)

    def _on_access(self, is_store: bool, addr: int, size: int, value: int) -> None:
        walk = self._walk
        if walk is None or not walk.steps:
            return
        step = walk.steps[-1]
        if is_store:  # the hook runs before the store: the memory still holds the old value
            old = int.from_bytes(self.m.read(addr, size), "little") if self.m.region(addr) else None
            step.stores.append(Access(addr, size, value & ((1 << (8 * size)) - 1), old))
        else:
            step.loads.append(Access(addr, size, 0))

    def _end(self, landing: int | None) -> None:
        walk, self._walk = self._walk, None
        assert walk is not None
        walk.landing = landing
        if walk.steps and walk.steps[-1].after is None:
            walk.steps[-1].after = self._batch.read()
        self._annotate_now(walk)
        if walk.kind == "entry":
            self.entry = walk
            if not self.returns:
                self.walks, self._done = [walk], True
            return
        self.walks, self._done = [walk] if self.entry is None else [self.entry, walk], True

    # -- what the memory is ----------------------------------------------------------------------

    def _annotate_now(self, walk: Walk) -> None:
        """Name the shadow stack's and the ring buffer's words while they hold what this walk left:
        a later walk moves them on."""
        for step in walk.steps:
            for acc in step.stores:
                if acc.struct is None:
                    acc.struct, acc.field = self._core_word(walk, acc.addr)

    def annotate(self) -> None:
        """Name every access of the kept walks: the structs the guest passed pointers to, the
        mailboxes, then the ring buffer's records and fgraph's words."""
        if not self._done and self.entry is not None and not self.walks:  # a return never came
            self.walks = [self.entry]
        for walk in self.walks:  # each walk's own structs: an entry's frame is gone by the return
            structs, stack = list(self._structs(walk)), self._stack_words(walk)
            for step in walk.steps:
                for acc in (*step.stores, *step.loads):
                    for s in structs:
                        name = s.field_at(acc.addr) if acc.struct is None else None
                        if name is not None:
                            acc.struct, acc.field = s.name, name
                    if acc.struct is None and acc.addr in stack:
                        acc.struct, acc.field = stack[acc.addr]
        self.phases()

    def _stack_words(self, walk: Walk) -> dict[int, tuple[str, str]]:
        """The stack words the walks' code used as the ABI says: where a call pushed its return
        address, the frame records (the fp/lr pair a frame pointer was then set to point at), and
        the traced function's return address when fgraph hooks it (the word that held the `ret` a
        shadow-stack frame saved)."""
        arch, words = self.m.arch, {}
        fp = self.regs.index(arch.fp)
        steps = walk.steps
        frames = {s.after[fp] for s in steps if s.after is not None and s.after[fp] != s.before[fp]}
        rets = {
            a.value
            for w in self.walks
            for s in w.steps
            for a in s.stores
            if (a.struct, a.field) == ("ftrace_ret_stack", "ret")
        }
        for step in steps:
            pushes_return = arch.lr is None and step.is_call
            for a in step.stores:
                if a.addr in frames:
                    words[a.addr] = ("frame record", "fp")
                    words.setdefault(a.addr + 8, ("frame record", "lr"))
                elif pushes_return:
                    words[a.addr] = ("stack", "return address")
                elif (a.old in rets and self._in_kernel_code(a.value)) or (
                    a.value in rets and a.old is not None and self._in_kernel_code(a.old)
                ):  # hooked (the return hook replaces it) or restored
                    words[a.addr] = ("stack", "the traced function's return address")
        return words

    def _structs(self, walk: Walk):
        """Each struct the walk's code passed a pointer to, and the mailboxes."""
        karch, m = self.lab.karch, self.m
        points_to = {"fregs": (karch.ftrace_regs, "ftrace_regs"), "regs": (karch.pt_regs, "pt_regs")}
        dispatch_calls = {m.symbols.get(name).addr for name in karch.sites.calls if m.symbols.get(name)}
        fregs_arg = m.arch.arg_regs[3]  # ftrace_func_t(ip, parent_ip, op, fregs)
        seen = set()
        boxes = [StructAt(box, layout, layout.name) for box, layout in m.mailboxes.items()]
        yield from boxes
        for step in walk.steps:
            if step.addr in dispatch_calls:
                ptr = step.before[self.regs.index(fregs_arg)]
                if ptr not in seen:
                    seen.add(ptr)
                    yield StructAt(ptr, karch.ftrace_regs, "ftrace_regs")
            for acc in step.stores:
                for box in boxes:
                    name = box.field_at(acc.addr)
                    if name in points_to and acc.value not in seen:
                        seen.add(acc.value)
                        yield StructAt(acc.value, *points_to[name])

    def _core_word(self, walk: Walk, addr: int) -> tuple[str | None, str | None]:
        """The ring buffer's record field or control word, or fgraph's shadow-stack word or task
        state, at addr, as they are now."""
        lab = self.lab
        rb, fg = lab.ring_buffer, lab.fgraph
        if rb.base <= addr < rb.base + rb.nr * rb.rec.size:
            index, off = divmod(addr - rb.base, rb.rec.size)
            rtype = self.m.u64(rb.base + index * rb.rec.size)
            layout = self.record_layouts.get(rtype)
            if layout is None:
                return "ring buffer record", f"+{off:#x}"
            return layout.name, StructAt(0, layout, layout.name).field_at(off)
        for base, layout in ((rb.control, RB_CONTROL), (fg.control, FG_CONTROL)):
            name = StructAt(base, layout, layout.name).field_at(addr)
            if name is not None:
                return layout.name, name
        if fg.ret_stack <= addr < fg.ret_stack + 4096:
            push = GUEST_PUSH[lab.karch.fgraph.fp_test]
            word = (addr - fg.ret_stack) // 8
            # after the entry walk's push, curr is the word past what it pushed
            first = fg.curr_ret_stack - push.nr_words if walk.kind == "entry" else None
            if first is not None and 0 <= word - first < push.nr_words:
                name = next(n for n, o in push.offsets.items() if o == 8 * (word - first))
                frame = name in ("ret", "func", "fp", "retp")
                return ("ftrace_ret_stack" if frame else "shadow stack"), (name if frame else f"{name} word")
            return "shadow stack", f"word {word}"
        return None, None

    def use_records(self, records, graph: bool) -> None:
        """The record layouts of the tracer the walk runs for (function: entries; graph: both)."""
        self.record_layouts = (
            {REC_ENTRY: records.graph_entry, REC_EXIT: records.graph_exit} if graph else {REC_ENTRY: records.function}
        )

    # -- phases ----------------------------------------------------------------------------------

    def phases(self) -> None:
        """What each step does, arch-neutrally, from what it did: the site; inside a call the
        trampoline made; at the trampoline's own level before its first call, building its frame,
        saving registers into the snapshot struct, or preparing the call; after a call, restoring
        registers from the struct, or returning. A step between two saves (or two restores) belongs
        to them. Python entries are named by the function whose call reached them."""
        arch = self.m.arch
        sp, fp = self.regs.index(arch.sp), self.regs.index(arch.fp)
        snapshot = {"ftrace_regs", "pt_regs"}
        for walk in self.walks:
            depth, called, entering, callee = 0, False, False, None
            for step in walk.steps:
                if entering:  # the first instruction of a call's target
                    entering, callee = False, step.sym.partition("+")[0]
                if step.python and callee:
                    step.python = callee
                if not self._in_kernel_code(step.addr):
                    step.phase = "site"
                elif step.single_step:  # a kprobe's single step: its breakpoint starts anew
                    step.phase, depth, called = SINGLE_STEP, 0, False
                    continue
                elif depth > 0 or step.is_call:
                    step.phase = "call handler"
                elif any(a.struct in snapshot for a in step.stores):
                    step.phase = "save registers"
                elif not called and any(a.struct == "frame record" for a in step.stores):
                    step.phase = "build frame"
                elif called and any(a.struct in snapshot for a in step.loads):
                    step.phase = "restore registers"
                elif called:
                    step.phase = "return"
                elif step.after is not None and (
                    step.after[sp] != step.before[sp] or step.after[fp] != step.before[fp]
                ):
                    step.phase = "build frame"
                else:
                    step.phase = "prepare call"
                if step.phase == "site":  # the site's call enters the trampoline: its level is 0
                    continue
                if step.is_call:
                    depth, called = depth + 1, True
                    entering = depth == 1
                elif step.is_return and depth > 0:
                    depth -= 1
            _between(walk.steps, "save registers", ("build frame", "prepare call"))
            _between(walk.steps, "restore registers", ("return",))


def _between(steps: list[Step], phase: str, fillable: tuple[str, ...]) -> None:
    """Steps of a fillable phase lying between two steps of `phase` take that phase."""
    marks = [i for i, s in enumerate(steps) if s.phase == phase]
    for i, j in itertools.pairwise(marks):
        if all(s.phase in (phase, *fillable) for s in steps[i:j]):
            for s in steps[i:j]:
                s.phase = phase
