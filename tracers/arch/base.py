"""What the kernel's arch/ code provides to the arch-neutral tracing core, per architecture.

One `KernelArch` per arch (tracers/arch/<arch>/__init__.py): the struct layouts its trampolines
fill, how its patch sites are encoded, what fgraph and rethook need fixed up, and its kprobes
decisions. Like the CPU's description, it is data and small functions; the core never tests the
arch's name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntFlag
from pathlib import Path
from types import ModuleType

from emulator import FtlabError, asm
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
    # ... a site with a CALL_OPS literal before its function (DYNAMIC_FTRACE_WITH_CALL_OPS), if the
    # arch has them: it reads the site's ftrace_ops from that literal; from the CHANGES entry
    # call_ops_since (before it, such sites call `caller`, their literal left unused)
    ops_caller: str | None = None
    call_ops_since: str | None = None
    regs_caller: str | None = "ftrace_regs_caller"  # ... for ops that want a full pt_regs, if any
    calls: tuple[str, ...] = ("ftrace_call", "ftrace_regs_call")  # their patchable ops calls
    # the ftrace_regs members its trampoline stores (None: KernelArch.ftrace_regs_saved)
    saved: tuple[str, ...] | None = None
    # Members whose kernel meaning is not "the register at the patch site":
    # (site ip, true registers at the site, u64(addr)) -> the true value.
    meaning: dict[str, Callable[[int, dict, Callable[[int], int]], int]] = field(default_factory=dict)
    where: str = ""  # where the site is and what its trampoline can know, in a phrase
    # registers its trampoline may return changed (what the compiler assumes the site's call clobbers)
    clobbers: tuple[str, ...] = ()
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
    # the lab's guest code for the callback and kretprobes' entry (rethook_guest.py), a .S beside
    # it; "" where every return takes the lab's Python handler
    guest: str = ""


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


# The BPF structs the trampolines and their helpers touch, as the lab keeps them: struct bpf_prog's
# recursion counter (the kernel's per-CPU prog->active; one CPU here), its misses (prog->stats'
# misses, bpf_prog_inc_misses_counter) and bpf_func; struct bpf_tramp_run_ctx (include/linux/bpf.h:
# an empty struct bpf_run_ctx, then bpf_cookie and saved_run_ctx); struct bpf_tramp_image's
# reference count (its percpu_ref pcref, one CPU).
BPF_PROG = Layout.of("bpf_prog", ("active", "misses", "bpf_func"))
BPF_TRAMP_RUN_CTX = Layout.of("bpf_tramp_run_ctx", ("bpf_cookie", "saved_run_ctx"))
BPF_TRAMP_IMAGE = Layout.of("bpf_tramp_image", ("pcref",))


class TrampFlag(IntFlag):
    """BPF_TRAMP_F_* (include/linux/bpf.h), the ones a tracing trampoline uses."""

    RESTORE_REGS = 1  # restore the argument registers before returning into the traced function
    CALL_ORIG = 2  # call the traced function (after its patch site) from the trampoline
    SKIP_FRAME = 4  # return to the traced function's caller, skipping its frame
    IP_ARG = 8  # store the traced function's address at ctx[-2]


@dataclass(frozen=True)
class FrameSlot:
    """One slot of a BPF trampoline's stack frame (Frame.slots()): its offset above the sp of the
    trampoline's body, its size, its name as the kernel's layout comment spells it
    (arch/*/net/bpf_jit_comp.c), and i where a program reads it as ctx[i] (None: not in ctx)."""

    offset: int
    size: int
    name: str
    ctx: int | None = None


@dataclass(frozen=True)
class TrampLink:
    """One program link as the trampoline calls it: its struct bpf_prog, cookie and bpf_func."""

    prog: int
    cookie: int
    bpf_func: int


@dataclass(frozen=True)
class TrampImage:
    """What arch_prepare_bpf_trampoline() is given: the traced function, its btf_func_model's
    nr_args, the flags, the links of each kind, the image's struct bpf_tramp_image (im) and the
    addresses of the C functions the trampoline calls."""

    name: str  # the image's label
    func_addr: int
    orig_call: int  # the traced function after its patch site
    nr_args: int
    flags: TrampFlag
    fentry: tuple[TrampLink, ...]
    fmod_ret: tuple[TrampLink, ...]
    fexit: tuple[TrampLink, ...]
    im: int
    calls: dict[str, int]  # __bpf_prog_enter_recur, __bpf_prog_exit_recur, __bpf_tramp_enter/exit


@dataclass(frozen=True)
class DirectCalls:
    """DYNAMIC_FTRACE_WITH_DIRECT_CALLS (register_ftrace_direct): how a site reaches a direct
    trampoline, such as a BPF trampoline, when other ftrace_ops share it, and that trampoline's
    code (tracers/arch/<arch>/bpf_trampoline.py, after arch_prepare_bpf_trampoline)."""

    member: str  # the ftrace_regs member arch_ftrace_set_direct_caller() writes the address into
    since: str | None  # the CHANGES entry that brought them to this arch (None: every modelled release)
    needs_call_ops: bool  # only at sites with a CALL_OPS literal (Kconfig: depends on CALL_OPS)
    unsupported: str  # why not, in the kernel's terms, before `since` or at a site without one
    trampoline: ModuleType


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
    exception_entry: str  # the kernel's name for the breakpoint exception's entry (entry.S)
    # The stack alignment the kernel's C code is built for: what a trampoline's sp must be a multiple
    # of when it calls into C, and where the kernel says so, in a phrase
    stack_align: int
    stack_align_reason: str
    direct_calls: DirectCalls
    # A user's trampolines: (the lab's .S file name, the user's .S that replaces it), set by `replacing`
    replaced: tuple[tuple[str, Path], ...] = ()

    def site_encoding(self, imports) -> SiteEncoding:
        """The kind of an object's sites: the one whose call symbol it imports, else the modelled
        one (gcc's -mnop-mcount and arm64's patchable NOPs import nothing)."""
        found = (e for e in self.legacy_sites if any(s in imports for s in e.call_symbols))
        return next(found, self.sites)

    @property
    def site_encodings(self) -> tuple[SiteEncoding, ...]:
        return (self.sites, *self.legacy_sites)

    @property
    def exception_saved(self) -> tuple[str, ...]:
        """The pt_regs members the breakpoint exception's entry (entry.S) stores from the CPU: every
        member that is a register (x86's orig_ax is not: the entry pushes -1, no error code)."""
        return tuple(r for r in self.pt_regs.offsets if r in self.cpu.regs)

    def partial_regs_of(self, kernel) -> PartialRegs:
        """The kernel release's ftrace_partial_regs() fix-ups."""
        return by_release(self.partial_regs, kernel)

    @property
    def name(self) -> str:
        return self.cpu.name

    def trampoline_sources(self, kernel) -> dict[str, str]:
        """The trampolines a user may replace (--trampoline NAME=FILE): the kernel's name for each,
        and the lab's .S file defining it in the kernel release (a KernelVersion)."""
        callers = {name for e in self.site_encodings for name in (e.caller, e.regs_caller, e.ops_caller) if name}
        rethook = self.rethook.trampoline(kernel)
        return {
            **dict.fromkeys(sorted(callers), "ftrace_caller.S"),
            "return_to_handler": self.fgraph.return_to_handler(kernel).source,
            rethook.symbol: rethook.source,
            self.exception_entry: "entry.S",
        }

    def replacing(self, trampolines: dict[str, Path], kernel) -> KernelArch:
        """This arch with the user's trampolines ({kernel name: .S path}) in place of the lab's .S
        files defining them. Each user file replaces a whole lab file, so two names of one file
        must name the same user file."""
        sources = self.trampoline_sources(kernel)
        replaced: dict[str, Path] = {}
        for name, given in trampolines.items():
            if name not in sources:
                raise FtlabError(
                    f"--trampoline {name}: no such trampoline on {self.name} (replaceable: {', '.join(sources)})"
                )
            path = Path(given)
            if not path.is_file():
                raise FtlabError(f"--trampoline {name}={path}: no such file")
            source = sources[name]
            if replaced.get(source, path) != path:
                others = [n for n, s in sources.items() if s == source]
                raise FtlabError(
                    f"--trampoline {name}={path}: {', '.join(others)} are all defined by one file, the "
                    f"lab's {source}, which {replaced[source]} already replaces"
                )
            replaced[source] = path
        return dataclasses.replace(self, replaced=self.replaced + tuple(replaced.items()))

    def source_path(self, source: str) -> Path:
        """The .S file loaded for one of the lab's source names: the user's, if replaced."""
        return dict(self.replaced).get(source, self.source_dir / source)

    def is_replaced(self, source: str) -> bool:
        return source in dict(self.replaced)

    def describe(self, source: str, symbol: str) -> str:
        """A trampoline as messages name it: `ftrace_caller (my_ftrace_caller.S)`."""
        return f"{symbol} ({self.source_path(source)})"

    def load(
        self, machine, source: str, constants: dict[str, int] | None = None, macros: str = "", then: str = ""
    ) -> dict[str, int]:
        """Assemble one of this arch's .S files into the lab text, with its asm-offsets (and any
        macros generated from the layouts it writes), and `then`, code the lab wrote in the file's
        macros, after it. A user's replacement (`replacing`) must define every global the lab's
        file defines; its `.include`s find the lab's files (macros.S) when they are not beside it,
        as the kernel's include path does."""
        constants = {**self.asm_constants, **(constants or {})}
        path = self.source_path(source)
        if path == self.source_dir / source:
            return machine.load_lab_code(path, constants, macros, text=path.read_text() + then)
        text = INCLUDE.sub(lambda m: self._include(path, m), path.read_text()) + then
        own = exported(asm.preprocess((self.source_dir / source).read_text(), self.source_dir, source))
        theirs = exported(asm.preprocess(text, path.parent, str(path)))
        missing = [name for name in own if name not in theirs]
        if missing:
            raise FtlabError(
                f"{path}: defines no global {', '.join(missing)}, which the lab's {source} defines "
                f"(.globl) and the lab looks up; copy {self.source_dir / source} as the template"
            )
        try:
            syms = machine.load_lab_code(path, constants, macros, text=text)
        except FtlabError as err:
            raise FtlabError(locate(err, path, constants)) from None
        return UserSymbols(syms, path, source)

    def check_call_alignment(self, machine, caller: Callable[[], str], callee: str) -> None:
        """A trampoline calling into C (at the callee's entry) must leave sp as the kernel's C code
        is built to expect it (stack_align); Unicorn does not check it (arm64's SCTLR_EL1.SA).
        caller() names the trampoline, only for the error: this runs at every hook."""
        sp = machine.reg(self.cpu.sp)
        if sp % self.stack_align:
            raise FtlabError(
                f"{caller()}: calls {callee} with sp {sp:#x}, not {self.stack_align}-byte aligned "
                f"({self.stack_align_reason})"
            )

    def _include(self, path: Path, match: re.Match) -> str:
        name = match.group(1)
        if (path.parent / name).exists():
            return match.group(0)
        if (self.source_dir / name).exists():
            return f'.include "{self.source_dir / name}"'
        raise FtlabError(f'{path}: .include "{name}": no such file beside it or in the lab\'s {self.source_dir}')


INCLUDE = re.compile(r'^\s*\.include\s+"([^"]+)"', re.MULTILINE)


def exported(statements: list[str]) -> list[str]:
    """The .globl names of preprocessed statements, in order."""
    return [s.split()[1] for s in statements if s.startswith(".globl")]


class UserSymbols(dict):
    """A user trampoline's labels: looking up one it does not define (a local label the lab's file
    has, such as a mailbox) is a one-line error naming both files."""

    def __init__(self, syms: dict[str, int], path: Path, source: str):
        super().__init__(syms)
        self.path, self.source = path, source

    def __missing__(self, name: str) -> int:
        raise FtlabError(
            f"{self.path}: defines no label {name}, which the lab's {self.source} defines and the lab uses"
        )


def locate(err: FtlabError, path: Path, constants: dict[str, int]) -> str:
    """An assembler error about a user's file, naming it by path and, where the failing statement
    is one line of it (not a macro's expansion), by line: `my.S:12: keystone cannot assemble ...`."""
    text = str(err)
    prefix = f"{path.name}: "
    if not text.startswith(prefix):
        return text
    rest = text[len(prefix) :]
    found = re.search(r"cannot assemble '(.*)': ", rest)
    if found:
        for number, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.split("//", 1)[0].strip()
            if line and asm.NAME.sub(lambda m: str(constants.get(m.group(), m.group())), line) == found.group(1):
                return f"{path}:{number}: {rest}"
    return f"{path}: {rest}"
