/*
 * Exception entry for arm64, after arch/arm64/kernel/entry.S (kernel_entry / kernel_exit).
 *
 * The lab's CPU model takes a BRK as the hardware does (ELR_EL1, ESR_EL1, SPSR_EL1, DAIF masked,
 * then VBAR_EL1 + 0x200); from there everything is guest code. The pt_regs is complete: x0-x30,
 * the interrupted sp, pc = ELR_EL1 and pstate = SPSR_EL1, the PSTATE the hardware saved.
 */
.balign 2048
.globl vectors
.globl trap_vector
vectors:
trap_vector:                            // VBAR_EL1; trap_vector is the arch-neutral name
    .space 0x200                        // EL1t vectors: never taken here
el1h_64_sync:                           // current EL with SP_ELx, synchronous
    sub sp, sp, #PT_REGS_SIZE           // kernel_entry 1
    stp x0, x1, [sp, #S_X0]
    stp x2, x3, [sp, #S_X2]
    stp x4, x5, [sp, #S_X4]
    stp x6, x7, [sp, #S_X6]
    stp x8, x9, [sp, #S_X8]
    stp x10, x11, [sp, #S_X10]
    stp x12, x13, [sp, #S_X12]
    stp x14, x15, [sp, #S_X14]
    stp x16, x17, [sp, #S_X16]
    stp x18, x19, [sp, #S_X18]
    stp x20, x21, [sp, #S_X20]
    stp x22, x23, [sp, #S_X22]
    stp x24, x25, [sp, #S_X24]
    stp x26, x27, [sp, #S_X26]
    stp x28, x29, [sp, #S_X28]
    add x21, sp, #PT_REGS_SIZE          // the interrupted sp
    mrs x22, elr_el1
    mrs x23, spsr_el1
    stp x30, x21, [sp, #S_LR]
    stp x22, x23, [sp, #S_PC]
    mov x0, sp                          // regs
    mrs x1, esr_el1                     // esr
    bl do_debug_exception
    ldp x21, x22, [sp, #S_PC]           // kernel_exit 1: handlers may change pc and pstate
    msr elr_el1, x21
    msr spsr_el1, x22
    ldp x0, x1, [sp, #S_X0]
    ldp x2, x3, [sp, #S_X2]
    ldp x4, x5, [sp, #S_X4]
    ldp x6, x7, [sp, #S_X6]
    ldp x8, x9, [sp, #S_X8]
    ldp x10, x11, [sp, #S_X10]
    ldp x12, x13, [sp, #S_X12]
    ldp x14, x15, [sp, #S_X14]
    ldp x16, x17, [sp, #S_X16]
    ldp x18, x19, [sp, #S_X18]
    ldp x20, x21, [sp, #S_X20]
    ldp x22, x23, [sp, #S_X22]
    ldp x24, x25, [sp, #S_X24]
    ldp x26, x27, [sp, #S_X26]
    ldp x28, x29, [sp, #S_X28]
    ldr x30, [sp, #S_LR]
    add sp, sp, #PT_REGS_SIZE
    eret

/* The C side (do_debug_exception(regs, esr) -> the brk handlers): its one instruction carries the
 * lab's code hook, where kprobes run. */
.globl do_debug_exception
.globl trap_dispatch
do_debug_exception:
trap_dispatch:
    ret
