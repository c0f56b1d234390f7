/*
 * Register save/restore sequences shared by the arm64 trampolines (the kernel's kernel_entry /
 * kernel_exit and save_all_base_regs). Offsets are asm-offsets names from the lab's tables.
 */

/* x0-x29 into a pt_regs at sp. */
.macro save_x0_x29
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
.endm

.macro restore_x0_x29
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
.endm

/* x0-x7 (the argument and return registers) into a ftrace_regs at sp. */
.macro save_x0_x7_fregs
    stp x0, x1, [sp, #FREGS_X0]
    stp x2, x3, [sp, #FREGS_X2]
    stp x4, x5, [sp, #FREGS_X4]
    stp x6, x7, [sp, #FREGS_X6]
.endm

.macro restore_x0_x7_fregs
    ldp x0, x1, [sp, #FREGS_X0]
    ldp x2, x3, [sp, #FREGS_X2]
    ldp x4, x5, [sp, #FREGS_X4]
    ldp x6, x7, [sp, #FREGS_X6]
.endm
