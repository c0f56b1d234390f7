.include "macros.S"
/*
 * Exception entry for arm64, after arch/arm64/kernel/entry.S (kernel_entry / kernel_exit).
 *
 * The lab's CPU model takes a BRK as the hardware does (ELR_EL1, ESR_EL1, SPSR_EL1, DAIF masked,
 * then VBAR_EL1 + 0x200); from there everything is guest code. The pt_regs is complete: x0-x30,
 * the interrupted sp, pc = ELR_EL1 and pstate = SPSR_EL1, the PSTATE the hardware saved; x29
 * points at pt_regs.stackframe, the metadata frame record {0, 0, FRAME_META_TYPE_PT_REGS}.
 */
.balign 2048
.globl vectors
.globl trap_vector
vectors:
trap_vector:                            // VBAR_EL1; trap_vector is the arch-neutral name
    .space 0x200                        // EL1t vectors: never taken here
el1h_64_sync:                           // current EL with SP_ELx, synchronous
    sub sp, sp, #PT_REGS_SIZE           // kernel_entry 1
    pt_regs_x0_x29 stp
    add x21, sp, #PT_REGS_SIZE          // the interrupted sp
    mrs x22, elr_el1
    mrs x23, spsr_el1
    stp x30, x21, [sp, #S_LR]
    stp xzr, xzr, [sp, #S_STACKFRAME]   // the metadata frame record: an exception boundary
    mov x0, #FRAME_META_TYPE_PT_REGS
    str x0, [sp, #S_STACKFRAME_TYPE]
    add x29, sp, #S_STACKFRAME
    stp x22, x23, [sp, #S_PC]
    mov x0, sp                          // regs
    mrs x1, esr_el1                     // esr
    bl do_debug_exception
    ldp x21, x22, [sp, #S_PC]           // kernel_exit 1: handlers may change pc and pstate
    msr elr_el1, x21
    msr spsr_el1, x22
    pt_regs_x0_x29 ldp
    ldr x30, [sp, #S_LR]
    add sp, sp, #PT_REGS_SIZE
    eret

/* The C side (do_debug_exception(regs, esr) -> the brk handlers), where kprobes run in the lab:
 * it leaves regs in lab data and branches to trap_dispatch, whose block carries the lab's hook. */
.globl do_debug_exception
.globl trap_handler
do_debug_exception:
trap_handler:                           // (arch-neutral name)
    ldr x9, trap_args
    str x0, [x9, #TRAP_ARGS_REGS]
    b trap_dispatch
.globl trap_dispatch
trap_dispatch:
    ret

.balign 8
trap_args:                              // where do_debug_exception leaves regs
    .quad 0
