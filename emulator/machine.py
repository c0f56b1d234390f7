"""Unicorn at kernel privilege: the memory map, calls into the guest, the budget, faults, patching.

Memory is mapped from host buffers (mem_map_ptr), so Python reads guest memory through a
memoryview without a copy or a call into Unicorn (0.3 µs for 256 bytes, against 2 µs through
mem_read). Code is only ever written through `patch()`/`write_code()`, which go through Unicorn
and flush its translation cache.
"""

from __future__ import annotations

import bisect
import ctypes
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import unicorn
from unicorn import UcError

from . import asm, refuse
from .arch import Arch
from .asm_object import load_assembly
from .binding import CallHooks, RegisterBatch
from .budget import built as budget_lib_built
from .budget import native_budget
from .console import Console
from .elf import LoadedObject, load_object
from .errors import BudgetExhausted, FtlabError, GuestFault
from .layout import Layout
from .symbols import Symbol, SymbolTable

DEFAULT_BUDGET = 200_000_000  # instructions per call into the guest
MASK64 = (1 << 64) - 1
U64 = struct.Struct("<Q")
PAGE_SHIFT = 12
DATA_PERMS = unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE
CODE_PERMS = unicorn.UC_PROT_ALL


def _i64(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


RETURN_KINDS: dict[str, Callable[[int, int], int | tuple[int, int]]] = {
    "i64": lambda lo, hi: _i64(lo),
    "u64": lambda lo, hi: lo,
    "i32": lambda lo, hi: (lo & 0xFFFFFFFF) - ((lo & 0x80000000) << 1),
    "u32": lambda lo, hi: lo & 0xFFFFFFFF,
    "u16": lambda lo, hi: lo & 0xFFFF,
    "u8": lambda lo, hi: lo & 0xFF,
    "pair": lambda lo, hi: (_i64(lo), _i64(hi)),
}


def decode_return(kind: str, lo: int, hi: int = 0):
    """Read return registers (or any register value) as a C type: i64, u64, i32, u32, u16, u8, pair."""
    return RETURN_KINDS[kind](lo, hi)


@dataclass
class Region:
    name: str
    base: int
    size: int
    buf: ctypes.Array
    view: memoryview

    @property
    def end(self) -> int:
        return self.base + self.size


class _AccessFault(Exception):
    """Raised from the trap hook when a guest exception is a failed memory access."""


class Machine:
    # The memory map. Objects load at 1 GiB: unicorn cannot fetch from the kernel's 0xffffffffc0000000
    # (no page tables), and below 2 GiB -mcmodel=kernel's R_X86_64_32S (sign-extended) still fits.
    # The lab's code sits 16 MiB below them, within arm64's ±128 MiB BL reach.
    HEAP = 0x1000_0000, 0x0100_0000  # buffers passed to calls by pointer
    STACK = 0x2000_0000, 0x0010_0000  # the task's kernel stack
    BPF = 0x3D00_0000, 0x0100_0000  # BPF maps' values, the BPF stack: memory programs point into
    LAB_DATA = 0x3E00_0000, 0x0100_0000  # per-cpu page, ops, buffers of the tracers
    LAB_TEXT = 0x3F00_0000, 0x0010_0000  # the lab's runtime and trampolines
    LAB_LIB = 0x3F10_0000, 0x0001_0000  # the kernel's library functions (lib.S): code the objects call
    OBJECTS = 0x4000_0000  # loaded objects, one mapping each
    ARG_AREA = 0x1000  # the top of the stack a call's arguments past the registers may use

    def __init__(self, arch: Arch, budget: int = DEFAULT_BUDGET):
        self.arch = arch
        if not 0 <= budget <= MASK64:  # unicorn's count is a uint64_t: a bigger one would wrap
            raise FtlabError(f"an instruction budget is 0 (none) to {MASK64:,}, not {budget:,}")
        self.budget = budget
        self.uc = unicorn.Uc(*arch.uc)
        if arch.cpu_model is not None:
            self.uc.ctl_set_cpu_model(arch.cpu_model)
        self.regions: list[Region] = []
        self._exec_pages: set[int] = set()  # page numbers the guest may execute from
        self._bases: list[int] = []  # region bases, sorted, for lookups by address
        self._by_base: list[Region] = []
        self.symbols = SymbolTable()
        self.objects: list[LoadedObject] = []
        for name, (base, size) in (
            ("heap", self.HEAP),
            ("stack", self.STACK),
            ("lab data", self.LAB_DATA),
            ("bpf", self.BPF),
            ("lab text", self.LAB_TEXT),
            ("lab lib", self.LAB_LIB),
        ):
            self._map(name, base, size)
        self.mark_executable(*self.LAB_TEXT)
        self.mark_executable(*self.LAB_LIB)
        self._cursor = {
            "heap": self.HEAP[0],
            "lab data": self.LAB_DATA[0],
            "bpf": self.BPF[0],
            "lab text": self.LAB_TEXT[0],
            "lab lib": self.LAB_LIB[0],
        }
        self._next_object = self.OBJECTS
        self.percpu = self.alloc("lab data", 0x10000, 0x1000)
        arch.setup_cpu(self.uc, self.percpu)
        self._reg = dict(arch.regs)
        self._fault_access: tuple[int, int, bool] | None = None  # (access, address, mapped)
        self._trap_hook = None
        self.code_hooks: set = set()  # per-instruction hooks: each slows every instruction under the budget
        # the budget's block hook (None: no budget, or unicorn's count= where it was not built),
        # which also dispatches hook_call's callbacks: the engine's only block hook
        self._budget = native_budget(self.uc, arch, self.read) if budget else None
        self._call_hooks = CallHooks(self.uc, self._budget)
        self._abandoned: list = []  # callbacks for a top-level call ending in an error
        self._plumbing: set[int] = set()  # mailbox stubs' blocks (and plumbing()'s), left out of lab-code costs
        self.mailboxes: dict[int, Layout] = {}  # mailbox address -> what the stub leaves there
        self.python_entries: set[int] = set()  # the blocks hook_call enters Python at
        self._lab_hook: int | None = None
        self.lab_insns = self.lab_stored = 0
        # Guest-virtual addresses map 1:1 and the lab fills the TLB itself (UC_TLB_VIRTUAL), which
        # makes stores about 8x cheaper in unicorn 2.1.4. Two things keep them on QEMU's fast path:
        # data pages are read+write only (a store to a page whose entry allows execution takes the
        # self-modifying-code slow path), and no memory hook is installed (any UC_HOOK_MEM_* sends
        # every access down the slow path): the fill itself notes what a fault touched.
        self.uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
        self.uc.hook_add(unicorn.UC_HOOK_TLB_FILL, self._tlb_fill)
        self._running = 0
        self._insn_hook: int | None = None
        self.insns = 0  # emulated instructions, while counting is on
        self._counted = (None, 0)  # the block counted last: (address, insns before it)
        self._blocks: dict[tuple[int, int], tuple[int, int]] = {}  # (addr, size) -> _block_cost
        runtime = self.load_lab_code(arch.runtime)
        self.exit_addr = runtime["ftlab_caller"]
        # the kernel's code the lab loads next (trampolines, exception entry, probe slots) begins
        # here: the runtime before it is the lab's plumbing for calls, not the kernel's
        self.kernel_text = self._cursor["lab text"]
        # lib.S beside runtime.S, in its own mapping: the addresses of the lab's own code stay put,
        # and lab-code costs (count_lab_code) leave out the kernel functions the objects call
        lib = self.load_lab_code(arch.runtime.with_name("lib.S"), where="lab lib")
        self.console = Console(self, lib)  # what the guest printk()s

    # -- memory ---------------------------------------------------------------------------------

    def _map(self, name: str, base: int, size: int) -> Region:
        buf = (ctypes.c_ubyte * size)()
        self.uc.mem_map_ptr(base, size, unicorn.UC_PROT_ALL, ctypes.addressof(buf))
        region = self._hot = self._warm = Region(name, base, size, buf, memoryview(buf).cast("B"))
        self.regions.append(region)
        i = bisect.bisect_right(self._bases, base)
        self._bases.insert(i, base)
        self._by_base.insert(i, region)
        return region

    def mark_executable(self, addr: int, size: int) -> None:
        """Let the guest execute from these pages (the others are data: read and write only)."""
        self._exec_pages.update(range(addr >> PAGE_SHIFT, (addr + size - 1 >> PAGE_SHIFT) + 1))

    def _tlb_fill(self, uc, vaddr, access, entry, _):
        executable = vaddr >> PAGE_SHIFT in self._exec_pages
        mapped = self.region(vaddr) is not None
        if not mapped or (access == unicorn.UC_MEM_FETCH and not executable):
            self._fault_access = (access, vaddr, mapped)
            return False  # the access faults
        entry.paddr = vaddr  # 1:1 (QEMU's page may be 1 KiB: keep the offset)
        entry.perms = CODE_PERMS if executable else DATA_PERMS
        return True

    def region(self, addr: int) -> Region | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            r = self._by_base[i]
            if addr < r.base + r.size:
                return r
        return None

    def locate(self, addr: int, size: int) -> tuple[memoryview, int]:
        """The view of the region holding [addr, addr+size) and the offset there, for decoding in
        place. The two regions found last are tried first: hooks go back and forth between the
        stack and the lab's data."""
        r = self._hot
        offset = addr - r.base
        if offset < 0 or offset + size > r.size:
            r = self._warm
            offset = addr - r.base
            if offset < 0 or offset + size > r.size:
                found = self.region(addr)
                if found is None or addr + size > found.end:
                    raise FtlabError(f"guest address {addr:#x}+{size} is not mapped")
                r, offset = found, addr - found.base
            self._hot, self._warm = r, self._hot
        return r.view, offset

    def view(self, addr: int, size: int) -> memoryview:
        """Guest memory without a copy. Only for data: writing code this way would bypass Unicorn."""
        view, offset = self.locate(addr, size)
        return view[offset : offset + size]

    def unpack(self, layout: struct.Struct, addr: int) -> tuple:
        """Guest data decoded in place: one struct unpack, no copy."""
        return layout.unpack_from(*self.locate(addr, layout.size))

    def pack(self, layout: struct.Struct, addr: int, *values) -> None:
        layout.pack_into(*self.locate(addr, layout.size), *values)

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.view(addr, size))

    def u64(self, addr: int) -> int:
        return self.unpack(U64, addr)[0]

    def write(self, addr: int, data: bytes) -> None:
        """Write data memory (not code: see patch)."""
        self.view(addr, len(data))[:] = data

    def alloc(self, where: str, size: int, align: int = 16) -> int:
        addr = -(-self._cursor[where] // align) * align
        region = self.region(addr)
        if region is None or addr + size > region.end or region.name != where:
            raise FtlabError(f"out of {where} memory allocating {size} bytes")
        self._cursor[where] = addr + size
        return addr

    @contextmanager
    def heap_scope(self) -> Iterator[None]:
        """Heap allocated inside the scope lives until it ends, across calls (each call frees
        only what it allocated itself): buffers a sequence of calls shares."""
        saved = self._cursor["heap"]
        try:
            yield
        finally:
            self._cursor["heap"] = saved

    def map_object(self, size: int) -> int:
        base = self._next_object
        size = max(0x10000, -(-size // 0x10000) * 0x10000)
        self._map("object", base, size)
        self._next_object = base + size
        return base

    # -- code -----------------------------------------------------------------------------------

    def write_code(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, data)
        self.uc.ctl_remove_cache(addr, addr + len(data))
        self._blocks.clear()
        if self._budget is not None:
            self._budget.forget()

    def patch(self, addr: int, old: bytes, new: bytes) -> None:
        """Replace code after checking what is there, as ftrace_modify_code() does."""
        found = self.read(addr, len(old))
        if found != old:
            raise FtlabError(
                f"refusing to patch {self.symbols.name(addr)} at {addr:#x}: expected "
                f"{old.hex(' ')}, found {found.hex(' ')} ({self.disasm(addr)})"
            )
        self.write_code(addr, new)

    def load_lab_code(
        self,
        source: str | Path,
        constants: dict[str, int] | None = None,
        macros: str = "",
        where: str = "lab text",
        text: str | None = None,
    ) -> dict[str, int]:
        """Assemble a .S file into lab text (or `where`); its .globl labels become lab symbols.
        `macros` are `.macro` definitions generated for it (as its constants are), read before the file.
        `text`, if given, is the file's text as the caller rewrote it; messages name it by `source`."""
        path = Path(source)
        base = self.alloc(where, 0, 16)
        text = path.read_text() if text is None else text
        code = asm.assemble(self.arch, macros + text, base, constants, name=path.name, where=path.parent)
        self.alloc(where, len(code.code), 1)
        self.write_code(base, code.code)
        # a .globl label runs to the next one (its local labels, such as loops, are inside it)
        ends = sorted({code.symbols[n] for n in code.exported} | {base + len(code.code)})
        for name in code.exported:
            addr = code.symbols[name]
            nxt = next(e for e in ends if e > addr) if addr < ends[-1] else addr
            self.symbols.add(Symbol(name, addr, nxt - addr, "lab"))
        return code.symbols

    def disasm(self, addr: int) -> str:
        try:
            return self.annotate(asm.disassemble_one(self.arch, self.read(addr, 16), addr))
        except FtlabError:
            return "(unmapped)"

    def annotate(self, text: str) -> str:
        """Name branch targets as objdump does: `call 0x3f000000 <__fentry__>`."""
        target = re.search(r"#?(0x[0-9a-f]+)$", text)
        if target:
            hit = self.symbols.lookup(int(target.group(1), 16))
            if hit and hit[1] == 0:
                text += f" <{hit[0].name}>"
        return text

    def where(self, addr: int) -> str:
        """`0x40000012 <fib+0x12>: mov rax, qword ptr [rbx]` for error messages."""
        return f"{addr:#x} <{self.symbols.name(addr)}>: {self.disasm(addr)}"

    def load(self, path, stubs=()):
        """An ELF object (.o, .ko), or an assembly source (.S) assembled into one (asm_object)."""
        path = Path(path)
        obj = (load_assembly if path.suffix == ".S" else load_object)(self, path, stubs)
        refuse.guard(self, obj)
        self.objects.append(obj)
        return obj

    # -- registers ------------------------------------------------------------------------------

    def reg(self, name: str) -> int:
        return self.uc.reg_read(self._reg[name])

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(self._reg[name], value & MASK64)

    def irqs_disabled(self) -> bool:
        """Whether the CPU has interrupts masked now (what irqs_disabled() would say)."""
        return self.irqs_masked(self.reg(self.arch.flags_reg))

    def irqs_masked(self, flags: int) -> bool:
        """Whether a flags word the guest read (x86 pushfq, arm64 DAIF: bits where the flags
        register has them) says interrupts are masked."""
        flag, masked = self.arch.irqs_off
        shift, width = self.arch.flag_bits[flag]
        return (flags >> shift) & ((1 << width) - 1) == masked

    def register_batch(self, names) -> RegisterBatch:
        return RegisterBatch(self.uc, [self._reg[n] for n in names])

    # -- hooks ----------------------------------------------------------------------------------

    def hook_code(self, callback, begin: int, end: int | None = None):
        """callback(addr) before each instruction in [begin, end]; costs nothing outside it."""
        end = begin if end is None else end
        handle = self.uc.hook_add(unicorn.UC_HOOK_CODE, lambda uc, addr, size, _: callback(addr), begin=begin, end=end)
        self.code_hooks.add(handle)
        self.uc.ctl_remove_cache(begin, end + 1)  # code translated before the hook has no call
        return handle

    def mailbox(self, stub: int, literal: int, layout: Layout) -> memoryview:
        """Lab data where the stub at `stub` leaves its arguments for a hook, as the layout's u64
        words (one load instead of a register read through the binding per argument); the stub's
        literal at `literal` points at it. The stub is the lab's plumbing, not the kernel's code:
        lab-code costs leave it out."""
        addr = self.alloc("lab data", layout.size, 64)
        self.write_code(literal, U64.pack(addr))
        self._plumbing.add(stub)
        self.mailboxes[addr] = layout
        return self.view(addr, layout.size).cast("Q")

    def plumbing(self, begin: int, end: int) -> None:
        """The lab code in [begin, end) is plumbing too, as a mailbox's stub: a block starting in it
        is left out of lab-code costs (the lab's own decision of a path, not the kernel's code)."""
        self._plumbing.update(addr for addr, _, _ in asm.disassemble(self.arch, self.read(begin, end - begin), begin))

    def hook_call(self, callback, addr: int):
        """callback(addr) each time the guest branches to addr, the entry of a lab function that
        is only ever called (never fallen into). A block hook on the block that starts there: unlike
        a code hook, it adds nothing to the cost of other instructions under the instruction
        budget, where unicorn checks every code hook at every instruction (4-7 ns each)."""
        self._call_hooks.add(callback, addr)
        self.python_entries.add(addr)
        self.uc.ctl_remove_cache(addr, addr + 1)

    def watch(self, on_block, on_access, on_insn, ranges) -> list:
        """Hooks for watching a stretch of execution closely (`ftlab step`): on_block(addr) at every
        translated block anywhere, on_access(is_store, addr, size, value) at every load and store,
        on_insn(addr) before each instruction in the (first, last) address ranges. Memory hooks take
        every access off QEMU's fast path: for short runs only. Returns the handles for unhook."""

        def access(uc, kind, addr, size, value, _):
            on_access(kind == unicorn.UC_MEM_WRITE, addr, size, value)

        handles = [
            self.uc.hook_add(unicorn.UC_HOOK_BLOCK, lambda uc, addr, size, _: on_block(addr)),
            self.uc.hook_add(unicorn.UC_HOOK_MEM_READ | unicorn.UC_HOOK_MEM_WRITE, access),
            *(self.hook_code(on_insn, first, last) for first, last in ranges),
        ]
        self.uc.ctl_flush_tb()
        return handles

    def on_abandoned_call(self, callback) -> None:
        """callback() when a top-level call ends in an error (a fault, the budget, a hook's exception),
        before the error is raised: what the guest had under way will never finish, as when a task
        dies, so state kept for it (shadow stacks, return hooks) is dropped."""
        self._abandoned.append(callback)

    def unhook(self, handle) -> None:
        self.uc.hook_del(handle)
        self.code_hooks.discard(handle)

    def install_trap_vector(self, addr: int) -> None:
        """Take breakpoint exceptions (int3 / brk) as the hardware does, into the guest's own
        handler at addr (arm64: the vector table VBAR_EL1 points at; x86_64: IDT gate 3)."""
        self.arch.install_trap_vector(self.uc, addr, self.percpu)
        if self._trap_hook is None:
            self._trap_hook = self.uc.hook_add(unicorn.UC_HOOK_INTR, self._on_trap)

    def _on_trap(self, uc, intno, _):
        if self._fault_access is not None:  # a failed access (page fault / data abort)
            raise _AccessFault
        refused = self.arch.deliver_trap(uc, intno, self.read)
        if refused is not None:
            raise self._fault(trap=refused)

    def count_lab_code(self, on: bool = True) -> None:
        """Count, exactly, the instructions the lab's own code runs and the bytes it stores: a
        block hook limited to the lab text range, so traced code runs at full speed."""
        if on and self._lab_hook is None:
            self.lab_insns = self.lab_stored = 0
            base, size = self.LAB_TEXT
            self._lab_hook = self.uc.hook_add(
                unicorn.UC_HOOK_BLOCK, self._on_lab_block, begin=base, end=base + size - 1
            )
            self.uc.ctl_remove_cache(base, base + size)
        elif not on and self._lab_hook is not None:
            self.uc.hook_del(self._lab_hook)
            self._lab_hook = None

    def _block_cost(self, addr: int, size: int) -> tuple[int, int]:
        """A translated block's instructions and the bytes they store, decoded once per block."""
        cost = self._blocks.get((addr, size))
        if cost is None:
            code, insns, stored, offset = self.read(addr, size), 0, 0, 0
            while offset < size:
                insn = asm.decode(self.arch, code[offset : offset + 16], addr + offset)
                insns, stored, offset = insns + 1, stored + asm.store_bytes(insn), offset + insn.size
            cost = self._blocks[(addr, size)] = (insns, stored)
        return cost

    def _on_lab_block(self, uc, addr, size, _):
        if addr in self._plumbing:
            return
        insns, stored = self._block_cost(addr, size)
        self.lab_insns += insns
        self.lab_stored += stored

    @property
    def counts_natively(self) -> bool:
        """Whether the native block hook (emulator.budget) can count instructions for the guest."""
        return budget_lib_built()

    def count_into(self, addr: int | None) -> None:
        """The `insns` clock in guest code: from now on, as each block begins, the u64 at addr holds
        the instructions entered since now, less one (the guest's ring buffer adds one as it stamps
        a record); None stops it. Needs the native hook (counts_natively), made here if the
        machine has no budget."""
        if self._budget is None:
            self._budget = native_budget(self.uc, self.arch, self.read)
            if self._budget is None:
                raise FtlabError("the insns clock in guest code needs the native block hook, which was not built")
        host = None
        if addr is not None:
            region = self.region(addr)
            assert region is not None
            host = ctypes.addressof(region.buf) + addr - region.base
        self._budget.clock_into(host)

    def count_instructions(self, on: bool = True) -> None:
        """Count every emulated instruction: a block hook adds each block's instruction count.

        Slower than running free (a Python call per block), so only while a consumer needs it.
        """
        if on and self._insn_hook is None:
            self._insn_hook = self.uc.hook_add(unicorn.UC_HOOK_BLOCK, self._on_block)
            self.uc.ctl_flush_tb()
        elif not on and self._insn_hook is not None:
            self.uc.hook_del(self._insn_hook)
            self._insn_hook = None

    def insns_before(self, block: int) -> int:
        """Instructions executed before the block starting at `block` that is running now, from a
        hook on that block: the counting hook may have run before it or not yet."""
        addr, before = self._counted
        return before if addr == block else self.insns

    def _on_block(self, uc, addr, size, _):
        if addr == self.exit_addr:
            return  # emulation stops before the exit's instruction runs
        self._counted = (addr, self.insns)
        self.insns += self._block_cost(addr, size)[0]

    # -- calls ----------------------------------------------------------------------------------

    def address_of(self, target) -> int:
        if isinstance(target, int):
            return target
        sym = self.symbols.get(target)
        if sym is None:
            raise FtlabError(f"no symbol '{target}' in the loaded objects")
        return sym.addr

    def entry_of(self, target) -> int:
        """The address a call by name starts at: only a function's, never data's (an object's
        data symbol, a --stub NAME=data stub, anything outside executable pages), whose bytes
        would run as code or whose code a caller would read as its value."""
        func = self.address_of(target)
        if isinstance(target, int):
            return func
        sym = self.symbols.get(target)
        if sym is not None and (sym.kind == "object" or func >> PAGE_SHIFT not in self._exec_pages):
            raise FtlabError(f"'{target}' is {sym.describe()}: it cannot be called")
        return func

    def call(self, target, *args, ret: str = "i64"):
        """Run one function to completion and return its result.

        Integer arguments go in the argument registers, then on the stack; bytes are copied into
        guest memory and passed by pointer (a bytearray is copied back after the call). `ret`
        says how to read the return registers: i64 (default), u64, i32, u32, u16, u8 or pair.
        Calls made from inside a hook (a handler calling the guest) run on the same stack, below
        the interrupted code, and leave its registers as they were.
        """
        decode = RETURN_KINDS.get(ret)
        if decode is None:
            raise FtlabError(f"unknown return kind '{ret}' (known: {', '.join(RETURN_KINDS)})")
        func = self.entry_of(target)
        regs = len(self.arch.arg_regs)
        if 8 * (len(args) - regs) > self.ARG_AREA:
            raise FtlabError(
                f"{self.symbols.name(func)}: {len(args)} arguments do not fit: at most {regs + self.ARG_AREA // 8} "
                f"({regs} in registers, {self.ARG_AREA // 8} in the {self.ARG_AREA} bytes of stack the lab "
                "reserves for arguments)"
            )
        nested = self._running > 0
        saved = self.uc.context_save() if nested else None
        heap = self._cursor["heap"]
        try:
            values, copy_back = self._marshal(args)
            top = (self.reg(self.arch.sp) - 512) if nested else self.STACK[0] + self.STACK[1]
            self._enter(func, values, top)
            self._run(func)
            lo, hi = (self.reg(r) for r in self.arch.ret_regs)
            for addr, buf in copy_back:
                buf[:] = self.read(addr, len(buf))
        except BaseException:
            if not nested:
                for callback in self._abandoned:
                    callback()
            raise
        finally:
            self._cursor["heap"] = heap
            if saved is not None:
                self.uc.context_restore(saved)
        return decode(lo, hi)

    def _marshal(self, args):
        values, copy_back = [], []
        for n, arg in enumerate(args, 1):
            if isinstance(arg, bool) or not isinstance(arg, (int, bytes, bytearray)):
                raise FtlabError(f"argument {n}: {type(arg).__name__} is not an int or bytes")
            if isinstance(arg, int):
                if not -(1 << 63) <= arg < (1 << 64):
                    raise FtlabError(f"argument {n}: {arg} does not fit in 64 bits")
                values.append(arg & MASK64)
                continue
            addr = self.alloc("heap", max(len(arg), 1), 16)
            self.write(addr, bytes(arg))
            values.append(addr)
            if isinstance(arg, bytearray):
                copy_back.append((addr, arg))
        return values, copy_back

    def _enter(self, func: int, values: list[int], top: int) -> None:
        arch = self.arch
        in_regs, on_stack = values[: len(arch.arg_regs)], values[len(arch.arg_regs) :]
        first_stack_arg = (top - 8 * len(on_stack) - 64) & ~15  # 16-byte aligned at the call
        sp = first_stack_arg - arch.stack_args_offset
        for i, v in enumerate(on_stack):
            self.write(first_stack_arg + 8 * i, U64.pack(v))
        if arch.lr is None:
            self.write(sp, U64.pack(self.exit_addr))  # the call's pushed return address
        else:
            self.set_reg(arch.lr, self.exit_addr)
        for name, v in zip(arch.arg_regs, in_regs, strict=False):  # in_regs may be the shorter
            self.set_reg(name, v)
        self.set_reg(arch.sp, sp)

    def _run(self, begin: int) -> None:
        self._running += 1
        fault = None
        native = self._budget
        if native is not None:
            native.arm(self.budget)
        try:
            self.uc.emu_start(begin, self.exit_addr, count=0 if native is not None else self.budget)
        except (UcError, _AccessFault) as err:
            fault = self._fault(err if isinstance(err, UcError) else None)
        finally:
            self._running -= 1
            if native is not None:
                native.disarm()
        raised = self._call_hooks.take()  # a lab callback's exception stopped the run
        if raised is not None:
            raise raised
        if fault is not None:
            raise fault
        pc = self.reg(self.arch.pc)
        if pc != self.exit_addr:
            raise BudgetExhausted(
                f"instruction budget of {self.budget:,} exhausted at {self.where(pc)} (raise it with --budget)"
            )

    def _exact_fault_address(self, pc: int) -> int | None:
        """The TLB fill sees only the page a failed load or store touched. To name the exact
        address, run the faulting instruction (which did not complete) once more in unicorn's own
        TLB mode, where a memory hook reports it."""
        hits = []

        def note(uc, access, addr, size, value, _):
            hits.append(addr)
            return False  # the access still fails

        hook = self.uc.hook_add(unicorn.UC_HOOK_MEM_INVALID, note)
        self.uc.ctl_set_tlb_mode(unicorn.UC_TLB_CPU)
        try:
            self.uc.emu_start(pc, 0, count=1)
        except UcError:
            pass
        finally:
            self.uc.ctl_set_tlb_mode(unicorn.UC_TLB_VIRTUAL)
            self.uc.hook_del(hook)
        return hits[0] if hits else None

    def _fault(self, err: UcError | None = None, trap: str | None = None) -> GuestFault:
        """The one-line error for a guest fault: the access that failed (noted by the TLB fill),
        else the trap or unicorn error, at the PC with its instruction."""
        pc = self.reg(self.arch.pc)
        if self._fault_access is not None:
            access, addr, mapped = self._fault_access
            self._fault_access = None
            bad_pointer = self.arch.bad_pointer and self.arch.bad_pointer(pc, self.symbols.name)
            if access == unicorn.UC_MEM_FETCH and bad_pointer:
                return GuestFault(f"guest fault: execution of {pc:#x}, {bad_pointer}")
            if not mapped and access != unicorn.UC_MEM_FETCH:
                addr = self._exact_fault_address(pc) or addr
            kind = {
                unicorn.UC_MEM_READ: "read of",
                unicorn.UC_MEM_WRITE: "write to",
                unicorn.UC_MEM_FETCH: "execution of",
            }.get(access, "access to")
            what = f"{kind} {'non-executable' if mapped else 'unmapped'} address {addr:#x}"
        elif err is None:
            what = f"unhandled {trap}"
        else:
            what = {
                unicorn.UC_ERR_INSN_INVALID: "invalid instruction",
                unicorn.UC_ERR_EXCEPTION: "unhandled trap or exception",
            }.get(err.errno, str(err))
        return GuestFault(f"guest fault: {what} at {self.where(pc)}")
