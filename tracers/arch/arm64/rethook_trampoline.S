/*
 * arch_rethook_trampoline for arm64: the trampoline of commit 83acdce68949 (5.18), reverted in the
 * same merge window (0f8f8030038a) because arm64 cannot build a pt_regs without an exception.
 * It is here to show exactly that: PSTATE is rebuilt from what MRS can read at EL1 (NZCV, DAIF,
 * CurrentEL, SPSel), so every other PSTATE bit (PAN, UAO, DIT, SSBS, TCO, SS, IL, BTYPE ...) is
 * lost, pc is only set afterwards by software, and only NZCV is written back.
 *
 * rethook replaced lr with this address, so the function's `ret` lands here.
 */
.globl arch_rethook_trampoline
arch_rethook_trampoline:
    sub sp, sp, #PT_REGS_SIZE
    stp x0, x1, [sp, #S_X0]             // save_all_base_regs
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
    add x0, sp, #PT_REGS_SIZE
    stp x30, x0, [sp, #S_LR]            // lr, and sp as it was before the trampoline
    mrs x0, nzcv                        // a "useful" PSTATE: all that MRS can see
    mrs x1, daif
    orr x0, x0, x1
    mrs x1, currentel
    orr x0, x0, x1
    mrs x1, spsel
    orr x0, x0, x1
    stp xzr, x0, [sp, #S_PC]            // pc = 0 (software sets it), pstate
    add x29, sp, #S_FP                  // x29/x30 in pt_regs form our frame record
    mov x0, sp                          // regs
    bl arch_rethook_trampoline_callback
    ldr x30, [sp, #S_PC]                // the real return address (the kernel returns it in x0)
    ldr x0, [sp, #S_PSTATE]             // restore_all_base_regs: only NZCV goes back
    and x0, x0, #0xf0000000
    msr nzcv, x0
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
    add sp, sp, #PT_REGS_SIZE
    ret

/* The callback (arch_rethook_trampoline_callback(regs)): its one instruction carries the lab's
 * code hook, which runs rethook_trampoline_handler(regs, regs->regs[29]); that sets regs->pc to
 * the real return address. */
.globl arch_rethook_trampoline_callback
arch_rethook_trampoline_callback:
    ret
