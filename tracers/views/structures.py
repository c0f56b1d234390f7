"""The structures the tracing mechanisms share, as pictures: each field's offset, size and name as
the kernel spells it, and which mechanisms fill it, all read from the tables the lab's code and
its assembly use (KernelArch, fgraph's and the records' layouts, the BPF trampolines' frames), so
a picture cannot drift from what runs.

`picture(name, arch, kernel)` gives one arch's Picture of a structure; `NAMES` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from emulator import FtlabError
from emulator import arch as cpus
from emulator.layout import Bits, Layout

from ..arch import kernel_arch
from ..arch.base import KernelArch, RegFixup
from ..core.bpf_trampoline import trampoline_flags
from ..core.fgraph import BITMAP_WORD, DATA_WORD, FTRACE_RET_STACK, GUEST_PUSH
from ..core.rethook import RETHOOK_NODE
from ..kernel_version import KernelVersion
from ..output.records import records_of

MASK64 = (1 << 64) - 1
SAVED, WRITTEN, NOT_STORED, ABSENT = "S", "w", ".", " "
MARKS = {
    SAVED: "the register's value",
    WRITTEN: "a value of its own, or a copy",
    NOT_STORED: "not captured",
}


@dataclass(frozen=True)
class Mechanism:
    """A column of a picture: a mechanism that fills the structure, marked by its key."""

    key: str
    name: str
    what: str  # what it is, in a phrase
    absent: str | None = None  # why this arch (or release) has no such mechanism


@dataclass(frozen=True)
class Fill:
    """One mechanism storing one field: the register's value (how == ''), or what it writes."""

    key: str
    how: str = ""


@dataclass(frozen=True)
class Field:
    offset: int | None  # None: not in guest memory
    size: int | None
    name: str
    fills: tuple[Fill, ...] = ()
    note: str = ""  # bit fields, the ctx index, the lab's own name for it


@dataclass(frozen=True)
class Picture:
    name: str  # the name `ftlab layout` takes
    struct: str  # the kernel's struct (or frame) it shows
    arch: str
    size: int | None  # None: the lab keeps it in Python, with no guest layout
    fields: tuple[Field, ...]
    mechanisms: tuple[Mechanism, ...]
    notes: tuple[str, ...] = ()
    gap: str = "not in the lab's table"  # what the bytes no field covers are

    def mark(self, f: Field, m: Mechanism) -> str:
        """SAVED, WRITTEN or NOT_STORED: what mechanism m does with field f (ABSENT: no such m)."""
        if m.absent is not None:
            return ABSENT
        how = next((fill.how for fill in f.fills if fill.key == m.key), None)
        return NOT_STORED if how is None else WRITTEN if how else SAVED

    def gaps(self) -> list[tuple[int, int]]:
        """(offset, size) of the bytes no field covers, up to the structure's size."""
        if self.size is None:
            return []
        out, at = [], 0
        for offset, size in sorted((f.offset, f.size or 0) for f in self.fields if f.offset is not None):
            if offset > at:
                out.append((at, offset - at))
            at = max(at, offset + size)
        return out + ([(at, self.size - at)] if self.size > at else [])

    def extent(self) -> str:
        return "kept in Python, no guest layout" if self.size is None else f"{self.size} bytes"

    def spans(self) -> list[tuple[int | None, int | None, Field | None]]:
        """What to draw, in order: (offset, size, the field, or None for bytes no field covers); a
        structure with no guest layout keeps its fields' order."""
        spans: list[tuple[int | None, int | None, Field | None]] = [(f.offset, f.size, f) for f in self.fields]
        if self.size is None:
            return spans
        spans += [(offset, size, None) for offset, size in self.gaps()]
        return sorted(spans, key=lambda s: s[0] or 0)


def _fields(layout: Layout, fills: dict[str, list[Fill]], notes: dict[str, str] | None = None) -> tuple[Field, ...]:
    """A Layout's u64 slots in offset order, with each slot's fills."""
    notes = notes or {}
    return tuple(
        Field(off, 8, name, tuple(fills.get(name, ())), notes.get(name, ""))
        for name, off in sorted(layout.offsets.items(), key=lambda item: item[1])
    )


def _add(fills: dict[str, list[Fill]], key: str, members, how: str = "") -> None:
    for m in members:
        fills.setdefault(m, []).append(Fill(key, how))


def _not_stored(layout: Layout, fills: dict[str, list[Fill]], key: str) -> list[str]:
    return [m for m in layout.offsets if not any(f.key == key for f in fills.get(m, ()))]


def _no_direct_call(karch: KernelArch, fills: dict[str, list[Fill]], key: str) -> None:
    """What every ftrace trampoline clears: the direct-call member (save_mcount_regs in x86's
    macros.S, `str xzr, [sp, #FREGS_DIRECT_TRAMP]` in arm64's ftrace_caller.S)."""
    _add(fills, key, [karch.direct_calls.member], "0: no direct call (yet)")


def ftrace_regs(karch: KernelArch, kernel: KernelVersion) -> Picture:
    layout: Layout = karch.ftrace_regs
    fills: dict[str, list[Fill]] = {}
    clobbers = set(karch.sites.clobbers)
    mechs = []
    saved = set(karch.ftrace_regs_saved)
    _add(fills, "C", karch.ftrace_regs_saved)
    _no_direct_call(karch, fills, "C")
    if karch.regs_caller is not None:
        _add(fills, "C", [karch.regs_caller.full_marker], "0: not a full pt_regs, ftrace_get_regs() gives NULL")
    skipped = [m for m in _not_stored(layout, fills, "C") if m not in clobbers]
    clobbered = [m for m in _not_stored(layout, fills, "C") if m in clobbers]
    caller = ["an enabled patch site's trampoline"]
    if skipped:
        caller.append(f"not stored: {' '.join(skipped)}, which ftrace_regs does not promise")
    if clobbered:
        caller.append(f"nor {' '.join(clobbered)}, which its site's call may clobber (the compiler assumes so)")
    mechs.append(Mechanism("C", "ftrace_caller", "; ".join(caller)))
    if karch.regs_caller is not None:
        _add(fills, "R", karch.regs_caller.saved)
        _no_direct_call(karch, fills, "R")
        mechs.append(Mechanism("R", "ftrace_regs_caller", "for ops with SAVE_REGS: a full pt_regs"))
    else:
        mechs.append(Mechanism("R", "ftrace_regs_caller", "", absent=karch.no_regs_caller_reason))
    for n, e in enumerate(karch.legacy_sites, 1):
        key = f"L{n}" if len(karch.legacy_sites) > 1 else "L"
        e_saved = e.saved or karch.ftrace_regs_saved
        _add(fills, key, e_saved)
        _no_direct_call(karch, fills, key)
        lost = sorted(saved - set(e_saved), key=list(layout.offsets).index)
        what = f"{e.name} sites: {e.where}" + (f"; does not store {' '.join(lost)}" if lost else "")
        mechs.append(Mechanism(key, e.caller, what))
    rth = karch.fgraph.return_to_handler(kernel)
    _add(fills, "F", rth.saved)
    mechs.append(Mechanism("F", "return_to_handler", f"fgraph's return hook (Linux {kernel}): {rth.effect}"))
    dc = karch.direct_calls
    if dc.since is None or kernel.has(dc.since):
        _add(fills, "D", [dc.member], "the direct trampoline's address (arch_ftrace_set_direct_caller)")
        where = " at CALL_OPS sites only" if dc.needs_call_ops else ""
        mechs.append(Mechanism("D", "direct call", f"a direct trampoline sharing the site (a BPF trampoline){where}"))
    else:
        mechs.append(Mechanism("D", "direct call", "", absent=dc.unsupported))
    aliases = "; ".join(f"{m} is pt_regs {r}" for m, r in karch.ftrace_regs_aliases.items())
    notes = (
        ["the same layout as pt_regs (ftrace_partial_regs() returns it as one)"] if karch.ftrace_regs_is_pt_regs else []
    )
    if aliases:
        notes.append(aliases)
    return Picture(
        "ftrace_regs", "struct ftrace_regs", karch.name, layout.size, _fields(layout, fills), tuple(mechs), tuple(notes)
    )


def _fixup(f: RegFixup) -> str:
    """member = old & keep | set, as the kernel's C would write it."""
    if f.keep == 0:
        return f"= {f.set:#x}"
    if f.set == 0:
        return f"&= ~{MASK64 & ~f.keep:#x}"
    if f.keep == MASK64:
        return f"|= {f.set:#x}"
    return f"= old & {f.keep:#x} | {f.set:#x}"


def pt_regs(karch: KernelArch, kernel: KernelVersion) -> Picture:
    layout: Layout = karch.pt_regs
    fills: dict[str, list[Fill]] = {}
    mechs = []
    _add(fills, "E", karch.exception_saved)
    mechs.append(
        Mechanism("E", karch.exception_entry, "the breakpoint exception (kprobes): entry.S stores every register")
    )
    tramp = karch.rethook.trampoline(kernel)
    _add(fills, "T", karch.rethook.saved)
    mechs.append(Mechanism("T", tramp.symbol, tramp.title))
    if karch.regs_caller is not None:
        _add(fills, "R", karch.regs_caller.saved)
        if karch.direct_calls.member in layout.offsets:
            _no_direct_call(karch, fills, "R")
        mechs.append(Mechanism("R", "ftrace_regs_caller", "for ops with SAVE_REGS, from a patch site"))
    else:
        mechs.append(Mechanism("R", "ftrace_regs_caller", "", absent=karch.no_regs_caller_reason))
    partial = karch.partial_regs_of(kernel)
    aliases = karch.ftrace_regs_aliases
    copied = [aliases.get(m, m) for m in karch.ftrace_regs_saved]
    _add(fills, "P", [m for m in copied if m not in {f.member for f in partial.fixups}])
    for f in partial.fixups:
        fills.setdefault(f.member, []).append(Fill("P", _fixup(f)))
    how = "the same memory" if karch.ftrace_regs_is_pt_regs else "copies of ftrace_caller's ftrace_regs"
    mechs.append(Mechanism("P", "ftrace_partial_regs", f"{how}, then Linux {kernel}'s fix-ups: {partial.effect}"))
    others = [m for m in layout.offsets if m not in karch.cpu.regs]
    notes = [f"{' '.join(others)}: not a CPU register, so no snapshot captures it as one"] if others else []
    return Picture(
        "pt_regs", "struct pt_regs", karch.name, layout.size, _fields(layout, fills), tuple(mechs), tuple(notes)
    )


def _bit_fields(bits: Bits) -> str:
    """`bits 0-9 frame_offset, 10-11 type, ...`"""
    parts = [f"{bits.shift(n)}-{bits.shift(n) + w - 1} {n}" for n, w in bits.widths.items()]
    return "bits " + ", ".join(parts)


def ftrace_ret_stack(karch: KernelArch, kernel: KernelVersion) -> Picture:
    fp_test = karch.fgraph.fp_test
    frame, push = FTRACE_RET_STACK[fp_test], GUEST_PUSH[fp_test]
    retp = {"sp": "the return slot's address", "fp": "the frame pointer at entry"}[karch.fgraph.retp]
    how = {
        "ret": "the real return address",
        "func": "the traced function's ip",
        "fp": "the frame pointer at entry, checked on return (HAVE_FUNCTION_GRAPH_FP_TEST)",
        "retp": f"{retp}: what unwinders match the hooked frame by",
        "bitmap": "which users want the return",
        "data": "a user's reserved data: the function_graph tracer's calltime",
        "header": "the reserved data's size and user",
    }
    fills = {m: [Fill("G", how[m])] for m in push.offsets}
    notes = {"bitmap": _bit_fields(BITMAP_WORD), "header": _bit_fields(DATA_WORD)}
    return Picture(
        "ftrace_ret_stack",
        f"struct ftrace_ret_stack ({frame.size} bytes) and the words fgraph pushes above it",
        karch.name,
        push.size,
        _fields(push, fills, notes),
        (Mechanism("G", "fgraph entry", "function_graph_enter_regs: one frame per hooked call"),),
        (
            "the shadow stack grows up: the frame, its bitmap word, then each user's data and its header",
            "offsets in the words above the frame count back to it (frame_offset)",
        ),
    )


def _record(karch: KernelArch, kernel: KernelVersion, name: str) -> Picture:
    recs = records_of(karch, kernel)
    layout, writer, regs_by = {
        "ftrace_entry": (recs.function, "function_trace_call", "ftrace_caller"),
        "ftrace_graph_ent_entry": (recs.graph_entry, "graph_trace_entry", "ftrace_caller"),
        "ftrace_graph_ret_entry": (recs.graph_exit, "graph_trace_return", "return_to_handler"),
    }[name]
    exit_ = name == "ftrace_graph_ret_entry"
    how = {
        "type": "the record's type, stored last: the commit",
        "ts": "rb_reserve: the trace clock",
        "ip": "the function, from the shadow-stack frame" if exit_ else "ip: the patch site",
        "parent": "where it returned to (the frame's ret)" if exit_ else "parent_ip: the caller",
        "depth": "the call's depth in the graph",
        "calltime": "the entry's timestamp, from the frame's reserved data",
    }
    if exit_:  # fgraph put the real return address there (ftrace_regs_set_instruction_pointer)
        how[f"regs_{karch.cpu.pc}"] = f"ftrace_regs {karch.cpu.pc}: the real return address, set by fgraph"
    fills: dict[str, list[Fill]] = {}
    for m in layout.offsets:
        member = m.removeprefix("regs_")
        fills[m] = [Fill("W", how.get(m, f"ftrace_regs {member}, as {regs_by} stored it"))]
    return Picture(
        name,
        f"the lab's {name} record",
        karch.name,
        layout.size,
        _fields(layout, fills),
        (Mechanism("W", writer, "the tracer's guest code (function_trace.S)"),),
        (
            f"every record in the ring buffer takes {recs.size} bytes, the largest record's size",
            (
                "the kernel's entries begin with struct trace_entry (type, flags, preempt_count, pid) and keep "
                "their timestamp in the ring buffer's event header; the lab's header is type and ts, and its "
                "records add the ftrace_regs members"
            ),
        ),
    )


def bpf_tramp_frame(karch: KernelArch, kernel: KernelVersion, nr_args: int = 2) -> Picture:
    tramp = karch.direct_calls.trampoline
    if not 0 <= nr_args <= tramp.MAX_ARGS:
        raise FtlabError(f"--nr-args {nr_args}: {karch.name}: 0 to {tramp.MAX_ARGS} ({tramp.TOO_MANY_ARGS})")
    flags = trampoline_flags({"fexit"}, wants_ip=True)
    frame = tramp.Frame(nr_args, flags)
    entry = tramp.ctx_from_body_sp(nr_args, flags) - tramp.ctx_from_entry_sp(nr_args, flags)
    ctx_how = {-2: "the traced function's address", -1: "nr_args", nr_args: "the traced function's return value"}
    run_ctx = "bpf_cookie, stored before each program runs (invoke_bpf_prog)"
    fields = []
    for s in frame.slots():
        key = "C" if s.offset >= entry else "T"
        how = ctx_how.get(s.ctx, f"argument {s.ctx}" if s.ctx is not None else "")
        how = run_ctx if s.name == "bpf_tramp_run_ctx" else how
        note = f"ctx[{s.ctx}]" if s.ctx is not None else ""
        fields.append(Field(s.offset, s.size, s.name, (Fill(key, how),), note))
    flag_names = "|".join(str(f.name) for f in type(flags) if f in flags)
    return Picture(
        "bpf_tramp_frame",
        f"an fexit BPF trampoline's frame, {nr_args} arguments, {flag_names}",
        karch.name,
        entry + sum(s.size for s in frame.slots() if s.offset >= entry),
        tuple(fields),
        (
            Mechanism("T", "the trampoline", "stores them (arch_prepare_bpf_trampoline)"),
            Mechanism("C", "its caller", "the call that enters it pushed them"),
        ),
        (
            "offsets from the sp of the trampoline's body; a program's ctx is the first argument's slot",
            "IP_ARG only when a program calls bpf_get_func_ip; without it there is no 'traced function' slot",
        ),
        gap="padding: sp stays 16-byte aligned",
    )


def rethook_node(karch: KernelArch, kernel: KernelVersion) -> Picture:
    """tracers/core/rethook.py's RETHOOK_NODE, as the kernel's node of each arch names its members:
    struct rethook_node (include/linux/rethook.h), or where the arch never had rethook, the
    kretprobe_instance of !KRETPROBE_ON_RETHOOK (include/linux/kprobes.h)."""
    kretprobe = karch.rethook.no_rethook_reason is not None
    frame = {"sp": "the entry sp: the return slot's address", "fp": "the frame pointer (x29) at entry"}
    hook = "arch_prepare_kretprobe" if kretprobe else "arch_rethook_prepare"
    names = {"rethook": "rph" if kretprobe else "rethook", "frame": "fp" if kretprobe else "frame"}
    fills = {
        "next": (Fill("H", "the task's list: the node hooked before it"), "llist; the free list's link too"),
        "rethook": (Fill("H", "the pool it came from"), ""),
        "ret_addr": (Fill("H", "the real return address"), ""),
        "frame": (Fill("H", frame[karch.fgraph.retp]), ""),
        "func": (
            Fill("H", "the hooked function's entry"),
            "the kernel's is the kretprobe's kp.addr" if kretprobe else "the kernel's is fprobe_rethook_node's",
        ),
        "data": (Fill("H", "the private data's address"), "the kernel's data[] follows the node"),
    }
    fields = tuple(
        Field(off, 8, names.get(name, name), (fills[name][0],), fills[name][1])
        for name, off in sorted(RETHOOK_NODE.offsets.items(), key=lambda item: item[1])
    )
    why = [karch.rethook.no_rethook_reason] if karch.rethook.no_rethook_reason is not None else []
    return Picture(
        "rethook_node",
        "struct kretprobe_instance" if kretprobe else "struct rethook_node",
        karch.name,
        RETHOOK_NODE.size,
        fields,
        (Mechanism("H", hook, "at the hooked function's entry"),),
        (
            "the lab's layout (guest code and Python share it), not the kernel's offsets: no rcu head",
            *why,
        ),
    )


BUILDERS = {
    "ftrace_regs": ftrace_regs,
    "pt_regs": pt_regs,
    "ftrace_ret_stack": ftrace_ret_stack,
    "ftrace_entry": lambda k, v: _record(k, v, "ftrace_entry"),
    "ftrace_graph_ent_entry": lambda k, v: _record(k, v, "ftrace_graph_ent_entry"),
    "ftrace_graph_ret_entry": lambda k, v: _record(k, v, "ftrace_graph_ret_entry"),
    "bpf_tramp_frame": bpf_tramp_frame,
    "rethook_node": rethook_node,
}
NAMES = tuple(BUILDERS)
ARCHES = tuple(cpus.ARCHES)  # the registered CPUs, in their order


def arches_of(option: str) -> list[str]:
    """--arch: one arch, or 'all' for both."""
    if option == "all":
        return list(ARCHES)
    if option not in ARCHES:
        raise FtlabError(f"--arch {option}: expected {', '.join(ARCHES)} or all")
    return [option]


def shared_struct(pictures: list[Picture]) -> str | None:
    """The struct all the pictures show, if one (rethook's node differs by arch)."""
    structs = {p.struct for p in pictures}
    return structs.pop() if len(structs) == 1 else None


def check_name(name: str | None) -> str:
    """The structure's name, or a one-line error listing them."""
    if name not in BUILDERS:
        given = "no NAME given" if name is None else f"no structure '{name}'"
        raise FtlabError(f"layout: {given} (one of: {', '.join(NAMES)})")
    return name


def picture(name: str, arch: str, kernel: KernelVersion, nr_args: int = 2) -> Picture:
    check_name(name)
    karch = kernel_arch(cpus.get(arch))
    if name == "bpf_tramp_frame":
        return bpf_tramp_frame(karch, kernel, nr_args)
    return BUILDERS[name](karch, kernel)
