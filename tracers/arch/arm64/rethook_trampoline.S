.include "macros.S"
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
    pt_regs_x0_x29 stp
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
    pt_regs_x0_x29 ldp
    add sp, sp, #PT_REGS_SIZE
    ret

/* The callback (arch_rethook_trampoline_callback(regs)) runs in the lab: it leaves regs in lab
 * data and branches to the block that carries the lab's hook, which runs
 * rethook_trampoline_handler(regs, regs->regs[29]); that sets regs->pc to the real return address. */
.globl arch_rethook_trampoline_callback
arch_rethook_trampoline_callback:
    ldr x9, callback_args
    str x0, [x9, #CALLBACK_ARGS_REGS]
    b rethook_callback_lab
.globl rethook_callback_lab
rethook_callback_lab:
    ret

.balign 8
callback_args:                          // where arch_rethook_trampoline_callback leaves regs
    .quad 0
