"""What every architecture description provides: data and small functions, no control flow.

The core (machine, loader, ftrace) only ever talks to an `Arch`; it never tests the arch's name.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MASK64 = (1 << 64) - 1


@dataclass(frozen=True, eq=False)          # one object per struct per arch, hashed by identity
class Layout:
    """A kernel struct made only of u64 slots, as an offset table (what asm-offsets gives the kernel)."""

    name: str
    size: int
    offsets: dict[str, int]

    def __post_init__(self):
        # all slots at once, for one bulk read of the struct
        object.__setattr__(self, "codec", struct.Struct(f"<{self.size // 8}Q"))

    def get(self, words: tuple[int, ...], name: str) -> int:
        return words[self.offsets[name] // 8]

    def asm_constants(self, prefix: str) -> dict[str, int]:
        """`PREFIX_FIELD` names for the assembly sources, like the kernel's asm-offsets."""
        consts = {f"{prefix}{name.upper()}": off for name, off in self.offsets.items()}
        consts[f"{prefix}SIZE"] = self.size
        return consts


@dataclass(frozen=True)
class Reloc:
    """One ELF relocation type: how to compute its value and how to store it at the place."""

    name: str
    size: int                                  # bytes at the place
    value: Callable[[int, int, int], int]      # (S, A, P) -> value
    store: Callable[[int, int], int] | None = None   # (old field, value) -> new field; None: plain little-endian
    bits: tuple[int, bool] | None = None       # (width, signed) range check of the value before storing


@dataclass(frozen=True)
class Arch:
    name: str
    elf_machine: str                 # e_machine as pyelftools names it
    uc: tuple[int, int]              # unicorn (arch, mode)
    cs: tuple[int, int]              # capstone (arch, mode)
    ks: tuple[int, int]              # keystone (arch, mode)
    insn_align: int                  # instruction alignment (1 on x86, 4 on arm64)
    cpu_model: int | None            # unicorn CPU model to select before anything else, if not the default

    # Registers, named as the kernel's struct pt_regs members, with their unicorn ids.
    regs: dict[str, int]
    pc: str
    sp: str
    arg_regs: tuple[str, ...]        # calling convention: integer argument registers in order
    ret_regs: tuple[str, ...]        # return value registers (low, high)
    lr: str | None                   # link register; None: the call pushes the return address
    fp: str                          # frame pointer register
    flags_reg: str                   # RFLAGS / PSTATE, as pt_regs names it
    flag_bits: dict[str, tuple[int, int]]    # its named fields: name -> (shift, width)
    stack_args_offset: int           # where the first stack argument sits relative to SP at entry

    pt_regs: Layout
    ftrace_regs: Layout
    ftrace_regs_saved: tuple[str, ...]     # members ftrace_caller actually stores
    ftrace_regs_aliases: dict[str, str]    # ftrace_regs member -> pt_regs member it holds
    # ftrace_regs_caller (DYNAMIC_FTRACE_WITH_REGS): what it saves, and the member that is non-zero
    # when a ftrace_regs is such a full pt_regs (x86: cs). None: the arch has no such trampoline.
    ftrace_regs_caller_saved: tuple[str, ...] | None
    ftrace_regs_full_marker: str | None
    no_regs_caller_reason: str | None      # why not, in the kernel's words
    ftrace_regs_is_pt_regs: bool           # ftrace_partial_regs() can return the same memory
    ftrace_regs_stack_args: bool           # ftrace_regs_get_argument(n) past the registers reads the stack
    # fgraph: what return_to_handler saves, the word unwinders match a hooked frame by (retp), and
    # whether the frame pointer is checked on return (HAVE_FUNCTION_GRAPH_FP_TEST).
    fgraph_exit_saved: tuple[str, ...]
    fgraph_retp: str                       # 'sp' (the return slot's address) or 'fp'
    fgraph_fp_test: bool
    # Members whose kernel meaning is not "the register at the patch site": site ip -> true value.
    ftrace_regs_meaning: dict[str, Callable[[int], int]]

    # Patch sites (kernel: ftrace_call_adjust, ftrace_init_nop, ftrace_make_call/_nop).
    site_tables: tuple[str, ...]           # sections listing the sites
    site_call_symbols: tuple[str, ...]     # relocations against these mark sites when no table exists
    site_size: int                         # bytes that toggle between NOP and call
    nop: bytes                             # the disabled site
    # (recorded address, read(addr, n), is_function_start(addr)) -> (rec ip, CALL_OPS literal address or None)
    adjust_site: Callable
    site_window: int                       # bytes before ip that init rewrites too (arm64: the MOV X9, LR)
    # (ip, compiled window bytes, address of the mcount symbol) -> the window after init, or None if unrecognised
    init_site: Callable
    encode_call: Callable[[int, int], bytes]   # (site ip, target) -> the enabled site bytes
    site_offset_from_reloc: int            # call-site ip = relocation place + this

    # rethook (arch/*/kernel/rethook.c): what the trampoline saves, and the callback's fix-ups.
    rethook_saved: tuple[str, ...]
    rethook_enter: Callable                # (pt_regs view) -> frame, after fixing up the saved regs
    rethook_leave: Callable                # (pt_regs view, frame, real return address, write) -> None

    # Exceptions, as the hardware takes them (unicorn reports them but delivers nothing).
    install_trap_vector: Callable          # (uc, vector address, scratch page) -> None: VBAR_EL1 / IDT gate 3
    deliver_trap: Callable                 # (uc, intno, read) -> str | None: None if taken, else why not

    relocs: dict[int, Reloc]
    setup_cpu: Callable                    # (uc, per-cpu page address) -> None: kernel privilege, selectors ...
    asm_constants: dict[str, int] = field(default_factory=dict)
    source_dir: Path = Path(".")           # runtime.S lives here


def sign_check(value: int, bits: int, signed: bool) -> bool:
    if signed:
        return -(1 << (bits - 1)) <= value < (1 << (bits - 1))
    return 0 <= value < (1 << bits)
