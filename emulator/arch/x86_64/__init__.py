"""x86_64: SysV calling convention, struct pt_regs, fentry patch sites (arch/x86/kernel/ftrace.c)."""
import struct
from pathlib import Path

import capstone
import keystone
import unicorn
from unicorn import x86_const as X

from ..base import Arch, Layout, Reloc

# struct pt_regs (arch/x86/include/asm/ptrace.h); ftrace_regs wraps one, so it has the same layout.
PT_REGS = Layout("pt_regs", 168, {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "bp": 32, "bx": 40, "r11": 48, "r10": 56,
    "r9": 64, "r8": 72, "ax": 80, "cx": 88, "dx": 96, "si": 104, "di": 112, "orig_ax": 120,
    "ip": 128, "cs": 136, "flags": 144, "sp": 152, "ss": 160,
})
FTRACE_REGS = Layout("ftrace_regs", 168, dict(PT_REGS.offsets))

REGS = {
    "r15": X.UC_X86_REG_R15, "r14": X.UC_X86_REG_R14, "r13": X.UC_X86_REG_R13, "r12": X.UC_X86_REG_R12,
    "bp": X.UC_X86_REG_RBP, "bx": X.UC_X86_REG_RBX, "r11": X.UC_X86_REG_R11, "r10": X.UC_X86_REG_R10,
    "r9": X.UC_X86_REG_R9, "r8": X.UC_X86_REG_R8, "ax": X.UC_X86_REG_RAX, "cx": X.UC_X86_REG_RCX,
    "dx": X.UC_X86_REG_RDX, "si": X.UC_X86_REG_RSI, "di": X.UC_X86_REG_RDI,
    "ip": X.UC_X86_REG_RIP, "cs": X.UC_X86_REG_CS, "flags": X.UC_X86_REG_RFLAGS,
    "sp": X.UC_X86_REG_RSP, "ss": X.UC_X86_REG_SS,
}

# RFLAGS fields (bit 1 always reads 1 and is not named).
RFLAGS_BITS = {"CF": (0, 1), "PF": (2, 1), "AF": (4, 1), "ZF": (6, 1), "SF": (7, 1), "TF": (8, 1),
               "IF": (9, 1), "DF": (10, 1), "OF": (11, 1), "IOPL": (12, 2), "NT": (14, 1), "RF": (16, 1),
               "VM": (17, 1), "AC": (18, 1), "VIF": (19, 1), "VIP": (20, 1), "ID": (21, 1)}

KERNEL_CS, KERNEL_DS = 0x10, 0x18      # __KERNEL_CS / __KERNEL_DS
CALL, NOP5 = 0xE8, bytes.fromhex("0f1f440000")   # x86_nops[5], what ftrace_make_nop writes
ENDBR64 = bytes.fromhex("f30f1efa")


def encode_call(ip: int, target: int) -> bytes:
    """`call rel32` (ftrace_call_replace); keystone can't be trusted with it (unicorn.md §20)."""
    rel = target - (ip + 5)
    if not -(1 << 31) <= rel < (1 << 31):
        raise ValueError(f"call from {ip:#x} to {target:#x} is out of rel32 range")
    return bytes([CALL]) + struct.pack("<i", rel)


IDT_OFFSET = 0x400                     # the IDT's place in the per-cpu page
INT3_VECTOR, X86_EFLAGS_IF, X86_EFLAGS_TF = 3, 1 << 9, 1 << 8
INT3_STACK_GAP = 16                    # room below the interrupted sp for int3 call emulation


def install_trap_vector(uc, handler, page):
    """An IDT whose gate 3 (#BP, int3) is a 64-bit interrupt gate to handler."""
    idt = page + IDT_OFFSET
    gate = struct.pack("<HHBBHIi", handler & 0xFFFF, KERNEL_CS, 0, 0x8E, (handler >> 16) & 0xFFFF,
                       handler >> 32, 0)
    uc.mem_write(idt + 16 * INT3_VECTOR, gate)
    uc.reg_write(X.UC_X86_REG_IDTR, (0, idt, 16 * 256 - 1, 0))


def deliver_trap(uc, intno, read):
    """What the CPU does for int3 through an interrupt gate: align the stack, push ss, rsp,
    rflags, cs and rip (already past the int3), clear IF and TF, jump to the gate's handler.
    The kernel's int3 entry leaves a gap under the interrupted stack for emulated calls."""
    if intno != INT3_VECTOR:
        return f"interrupt {intno} (only int3 is delivered)"
    base, limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)[1:]
    lo, sel, _, attr, mid, hi, _ = struct.unpack("<HHBBHIi", read(base + 16 * intno, 16))
    rip, rsp, flags = (uc.reg_read(r) for r in (X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS))
    frame = ((rsp - INT3_STACK_GAP) & ~0xF) - 40
    uc.mem_write(frame, struct.pack("<5Q", rip, KERNEL_CS, flags, rsp, KERNEL_DS))
    uc.reg_write(X.UC_X86_REG_RSP, frame)
    uc.reg_write(X.UC_X86_REG_RFLAGS, flags & ~(X86_EFLAGS_IF | X86_EFLAGS_TF))
    uc.reg_write(X.UC_X86_REG_RIP, lo | mid << 16 | hi << 32)
    return None


def rethook_enter(regs):
    """arch_rethook_trampoline_callback's fix-ups; the frame is the fake return slot above regs."""
    regs._set("cs", KERNEL_CS)
    regs._set("orig_ax", (1 << 64) - 1)
    regs._set("sp", regs.kernel_stack_pointer() + 16)      # the trampoline pushed sp - 16
    return regs.addr + PT_REGS.size


def rethook_leave(regs, frame, ret, write):
    """arch_rethook_fixup_return writes the real return address for the final ret; flags are
    copied into the ss slot so the trampoline can popfq right before that ret."""
    write(frame, struct.pack("<Q", ret))
    regs._set("ss", regs.fields["flags"])


def adjust_site(addr, read, is_function_start):
    return addr, None          # __mcount_loc records the call itself (func+0, or func+4 after endbr64)


def init_site(ip, window, mcount):
    """ftrace_init_nop: `call __fentry__` (or gcc's -mnop-mcount NOP) becomes NOP5."""
    if window == NOP5 or window == encode_call(ip, mcount):
        return NOP5
    return None


def setup_cpu(uc, page):
    """Long mode at CPL 0 with real kernel selectors: a GDT (iretq needs one, unicorn.md §8), IF on,
    and GS pointing at a zeroed per-cpu page (the stack canary lives at %gs:0x28)."""
    gdt = page + 0x800
    uc.mem_write(gdt, struct.pack("<4Q", 0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt, 4 * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_CS, KERNEL_CS)
    uc.reg_write(X.UC_X86_REG_SS, KERNEL_DS)
    uc.reg_write(X.UC_X86_REG_GS_BASE, page)
    uc.reg_write(X.UC_X86_REG_RFLAGS, 0x202)


RELOCS = {
    1: Reloc("R_X86_64_64", 8, lambda S, A, P: S + A),
    2: Reloc("R_X86_64_PC32", 4, lambda S, A, P: S + A - P, bits=(32, True)),
    4: Reloc("R_X86_64_PLT32", 4, lambda S, A, P: S + A - P, bits=(32, True)),
    10: Reloc("R_X86_64_32", 4, lambda S, A, P: S + A, bits=(32, False)),
    11: Reloc("R_X86_64_32S", 4, lambda S, A, P: S + A, bits=(32, True)),
    24: Reloc("R_X86_64_PC64", 8, lambda S, A, P: S + A - P),
}

ASM_NAMES = {"bp": "RBP", "bx": "RBX", "ax": "RAX", "cx": "RCX", "dx": "RDX", "si": "RSI", "di": "RDI",
             "orig_ax": "ORIG_RAX", "ip": "RIP", "flags": "EFLAGS", "sp": "RSP"}

ARCH = Arch(
    name="x86_64",
    elf_machine="EM_X86_64",
    uc=(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64),
    cs=(capstone.CS_ARCH_X86, capstone.CS_MODE_64),
    ks=(keystone.KS_ARCH_X86, keystone.KS_MODE_64),
    cpu_model=None,
    insn_align=1,
    regs=REGS,
    pc="ip",
    sp="sp",
    arg_regs=("di", "si", "dx", "cx", "r8", "r9"),
    ret_regs=("ax", "dx"),
    lr=None,
    fp="bp",
    flags_reg="flags",
    flag_bits=RFLAGS_BITS,
    stack_args_offset=8,                       # above the return address
    pt_regs=PT_REGS,
    ftrace_regs=FTRACE_REGS,
    # ftrace_caller (arch/x86/kernel/ftrace_64.S) stores these; cs = 0 and orig_ax = 0 are markers
    # ("not a full pt_regs"), not captured registers.
    ftrace_regs_saved=("ax", "cx", "dx", "si", "di", "r8", "r9", "bp", "ip", "sp"),
    ftrace_regs_aliases={},
    ftrace_regs_caller_saved=tuple(r for r in PT_REGS.offsets if r != "orig_ax"),
    ftrace_regs_full_marker="cs",               # arch_ftrace_get_regs(): NULL when regs.cs == 0
    no_regs_caller_reason=None,
    ftrace_regs_is_pt_regs=True,                # HAVE_FTRACE_REGS_HAVING_PT_REGS
    ftrace_regs_stack_args=True,             # regs_get_kernel_argument: n >= 6 is sp[n - 5]
    fgraph_exit_saved=("ax", "dx", "bp", "ip"),   # ip: the real return address, set by fgraph
    fgraph_retp="sp",
    fgraph_fp_test=False,
    # regs.ip is the return address the site's call pushed: the instruction after the 5-byte site.
    ftrace_regs_meaning={"ip": lambda site: site + 5},
    site_tables=("__mcount_loc",),
    site_call_symbols=("__fentry__",),
    site_size=5,
    nop=NOP5,
    adjust_site=adjust_site,
    site_window=0,
    init_site=init_site,
    encode_call=encode_call,
    site_offset_from_reloc=-1,                 # the PLT32 relocation is on the rel32 after the e8 byte
    # A complete pt_regs without an exception: every register, flags from pushfq, fixed cs/ss.
    rethook_saved=tuple(r for r in PT_REGS.offsets if r != "orig_ax"),
    rethook_enter=rethook_enter,
    rethook_leave=rethook_leave,
    install_trap_vector=install_trap_vector,
    deliver_trap=deliver_trap,
    relocs=RELOCS,
    setup_cpu=setup_cpu,
    # The kernel's ptrace-abi.h names for the pt_regs offsets: RAX, RIP, EFLAGS, ORIG_RAX ...
    asm_constants={**{ASM_NAMES.get(k, k.upper()): v for k, v in PT_REGS.offsets.items()},
                   "FRAME_SIZE": PT_REGS.size, "KERNEL_CS": KERNEL_CS, "KERNEL_DS": KERNEL_DS},
    source_dir=Path(__file__).parent,
)
