"""What the kernel's arch/ code provides to the arch-neutral tracing core, per architecture.

One `KernelArch` per arch (tracers/arch/<arch>/__init__.py): the struct layouts its trampolines
fill, how its patch sites are encoded, what fgraph and rethook need fixed up, and its kprobes
decisions. Like the CPU's description, it is data and small functions; the core never tests the
arch's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from emulator.arch import Arch
from emulator.layout import Layout


@dataclass(frozen=True)
class SiteEncoding:
    """One kind of patch site (ftrace_call_adjust, ftrace_init_nop, ftrace_make_call/_nop), and the
    trampolines its enabled sites call. An arch may have several kinds (fentry or patchable entries,
    and the legacy -pg mcount call after the prologue); each object's sites are of one kind."""

    name: str  # 'fentry', 'patchable', 'mcount': what the lab's tables call it
    tables: tuple[str, ...]  # sections listing the sites
    call_symbols: tuple[str, ...]  # relocations against these mark sites when no table exists
    offset_from_reloc: int  # call-site ip = relocation place + this
    size: int  # bytes that toggle between NOP and call
    nop: bytes  # the disabled site
    # (recorded address, read(addr, n), is_function_start(addr)) -> (rec ip, CALL_OPS literal or None)
    adjust: Callable
    window: int  # bytes before ip that init rewrites too (arm64: the MOV X9, LR)
    # (ip, compiled window bytes, address of the mcount symbol) -> the window after init, or None
    init: Callable
    encode_call: Callable[[int, int], bytes]  # (site ip, target) -> the enabled site bytes
    caller: str = "ftrace_caller"  # the trampoline an enabled site calls
    regs_caller: str | None = "ftrace_regs_caller"  # ... for ops that want a full pt_regs, if any
    calls: tuple[str, ...] = ("ftrace_call", "ftrace_regs_call")  # their patchable ops calls
    # the ftrace_regs members its trampoline stores (None: KernelArch.ftrace_regs_saved)
    saved: tuple[str, ...] | None = None
    # Members whose kernel meaning is not "the register at the patch site":
    # (site ip, true registers at the site, u64(addr)) -> the true value.
    meaning: dict[str, Callable[[int, dict, Callable[[int], int]], int]] = field(default_factory=dict)
    where: str = ""  # where the site is and what its trampoline can know, in a phrase
    after_prologue: bool = False  # the site follows the function's prologue (-pg mcount)


@dataclass(frozen=True)
class RegsCaller:
    """ftrace_regs_caller (DYNAMIC_FTRACE_WITH_REGS): what it saves, and the member that is non-zero
    when a ftrace_regs is such a full pt_regs (x86: cs)."""

    saved: tuple[str, ...]
    full_marker: str


@dataclass(frozen=True)
class ReturnToHandler:
    """One release's return_to_handler: a .S file beside the arch's __init__.py, the ftrace_regs
    members it stores (and fgraph's ip/pc, the real return address), and what that exit
    ftrace_regs is to its users (unwinders, $stack, BPF), in a phrase."""

    source: str
    saved: tuple[str, ...]
    effect: str


@dataclass(frozen=True)
class FgraphArch:
    """return_to_handler by release, the word unwinders match a hooked frame by (retp: 'sp', the
    return slot's address, or 'fp'), and whether the frame pointer is checked on return
    (HAVE_FUNCTION_GRAPH_FP_TEST)."""

    # (the CHANGES entry that brought it, or None for the oldest modelled release; its
    # return_to_handler), oldest first
    return_to_handlers: tuple[tuple[str | None, ReturnToHandler], ...]
    retp: str
    fp_test: bool

    def return_to_handler(self, kernel) -> ReturnToHandler:
        """The return_to_handler of the kernel release (a tracers.kernel_version.KernelVersion)."""
        return by_release(self.return_to_handlers, kernel)

    def exit_saved(self, kernel) -> tuple[str, ...]:
        """The ftrace_regs members the release's return_to_handler stores (fgraph_exit_saved)."""
        return self.return_to_handler(kernel).saved


@dataclass(frozen=True)
class ReturnTrampoline:
    """One release's return trampoline: a .S file beside the arch's __init__.py defining `symbol`."""

    source: str
    symbol: str  # the kernel's name for it
    title: str  # what the return handlers' pt_regs is, for the lab's tables
    # True: the trampoline is a breakpoint; the handlers run from the exception (kprobes' entry.S)
    # with its pt_regs. False: it builds a pt_regs itself and calls `callback` (lab plumbing).
    trap: bool = False
    callback: str = ""


def by_release(entries, kernel):
    """The last of (CHANGES name or None for the oldest modelled release, value) pairs, oldest
    first, that the kernel release (a tracers.kernel_version.KernelVersion) has."""
    return [value for change, value in entries if change is None or kernel.has(change)][-1]


@dataclass(frozen=True)
class RegFixup:
    """One pt_regs member an arch's ftrace_partial_regs() writes: member = old & keep | set."""

    member: str
    keep: int
    set: int


@dataclass(frozen=True)
class PartialRegs:
    """One release's ftrace_partial_regs() (include/linux/ftrace.h, the arch's asm/ftrace.h): the
    members it writes beyond the copied ftrace_regs, and what that makes of the result for BPF's
    stack helpers (user_mode(regs), perf's unwinder), in a phrase."""

    fixups: tuple[RegFixup, ...]
    effect: str


@dataclass(frozen=True)
class RethookArch:
    """arch/*/kernel/rethook.c (or the arch's kretprobe trampoline, where there is no rethook): the
    return trampolines by release, what they save, and the handler's fix-ups."""

    saved: tuple[str, ...]
    enter: Callable  # (pt_regs view) -> frame, after fixing up the saved regs
    leave: Callable  # (pt_regs view, frame, real return address, write) -> None
    # (the CHANGES entry that brought it, or None for the oldest modelled release; trampoline), oldest first
    trampolines: tuple[tuple[str | None, ReturnTrampoline], ...]
    no_rethook_reason: str | None = None  # why fprobe's rethook design (5.18-6.13) never existed here

    def trampoline(self, kernel) -> ReturnTrampoline:
        """The return trampoline of the kernel release (a tracers.kernel_version.KernelVersion)."""
        return by_release(self.trampolines, kernel)


@dataclass(frozen=True)
class KernelArch:
    cpu: Arch
    pt_regs: Layout
    ftrace_regs: Layout
    ftrace_regs_saved: tuple[str, ...]  # members ftrace_caller actually stores
    ftrace_regs_aliases: dict[str, str]  # ftrace_regs member -> pt_regs member it holds
    ftrace_regs_is_pt_regs: bool  # ftrace_partial_regs() can return the same memory
    ftrace_regs_stack_args: bool  # ftrace_regs_get_argument(n) past the registers reads the stack
    # ftrace_partial_regs() by release: (the CHANGES entry that brought it, or None; its fix-ups), oldest first
    partial_regs: tuple[tuple[str | None, PartialRegs], ...]
    regs_caller: RegsCaller | None  # None: the arch has no ftrace_regs_caller ...
    no_regs_caller_reason: str | None  # ... and why not, in the kernel's words
    sites: SiteEncoding  # the modelled release's kind of site
    legacy_sites: tuple[SiteEncoding, ...]  # older kinds the lab also patches (the -pg mcount call)
    fgraph: FgraphArch
    rethook: RethookArch
    kprobes: ModuleType  # tracers/arch/<arch>/kprobes.py
    asm_constants: dict[str, int]  # asm-offsets for the .S files beside it
    source_dir: Path  # the arch's trampolines

    def site_encoding(self, imports) -> SiteEncoding:
        """The kind of an object's sites: the one whose call symbol it imports, else the modelled
        one (gcc's -mnop-mcount and arm64's patchable NOPs import nothing)."""
        found = (e for e in self.legacy_sites if any(s in imports for s in e.call_symbols))
        return next(found, self.sites)

    @property
    def site_encodings(self) -> tuple[SiteEncoding, ...]:
        return (self.sites, *self.legacy_sites)

    def partial_regs_of(self, kernel) -> PartialRegs:
        """The kernel release's ftrace_partial_regs() fix-ups."""
        return by_release(self.partial_regs, kernel)

    @property
    def name(self) -> str:
        return self.cpu.name

    def load(self, machine, source: str, constants: dict[str, int] | None = None, macros: str = "") -> dict[str, int]:
        """Assemble one of this arch's .S files into the lab text, with its asm-offsets (and any
        macros generated from the layouts it writes)."""
        return machine.load_lab_code(self.source_dir / source, {**self.asm_constants, **(constants or {})}, macros)
