.include "macros.S"
/*
 * __kretprobe_trampoline for arm64 before 6.9: arch/arm64/kernel/probes/kprobes_trampoline.S in
 * mainline 5.x-6.8 (with its frame record, fc6d647638a8, as in every modelled release). arm64
 * cannot build a pt_regs without an exception, and this trampoline shows what that costs: PSTATE
 * is rebuilt from what MRS can read at EL1 (NZCV, DAIF, CurrentEL, SPSel), so every other PSTATE
 * bit (PAN, UAO, DIT, SSBS, TCO, SS, IL, BTYPE ...) is lost, pc is only set afterwards by
 * software, and only NZCV is written back. Since 6.9 (253751233b19) the trampoline is a BRK instead
 * (kretprobe_trampoline.S). arm64's rethook of 83acdce68949, reverted as 0f8f8030038a in the 5.18
 * merge window, had the same trampoline under the name arch_rethook_trampoline.
 *
 * arch_prepare_kretprobe replaced lr with this address, so the function's `ret` lands here.
 */
.globl __kretprobe_trampoline
__kretprobe_trampoline:
    sub sp, sp, #PT_REGS_SIZE
    pt_regs_x0_x29 stp                  // save_all_base_regs
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
    bl trampoline_probe_handler
    ldr x30, [sp, #S_PC]                // the real return address (the kernel: mov lr, x0, the same value)
    ldr x0, [sp, #S_PSTATE]             // restore_all_base_regs: only NZCV goes back
    and x0, x0, #0xf0000000
    msr nzcv, x0
    pt_regs_x0_x29 ldp
    add sp, sp, #PT_REGS_SIZE
    ret

/* The handler (trampoline_probe_handler(regs)) runs in the lab: it leaves regs in lab data and
 * branches to the block that carries the lab's hook, which runs
 * kretprobe_trampoline_handler(regs, regs->regs[29]); that sets regs->pc to the real return address. */
.globl trampoline_probe_handler
trampoline_probe_handler:
    ldr x9, callback_args
    str x0, [x9, #CALLBACK_ARGS_REGS]
    b rethook_callback_lab
.globl rethook_callback_lab
rethook_callback_lab:
    ret

.balign 8
callback_args:                          // where trampoline_probe_handler leaves regs
    .quad 0
