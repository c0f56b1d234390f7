/*
 * __kretprobe_trampoline for arm64 since 6.9 (commit 253751233b19,
 * arch/arm64/kernel/probes/kprobes_trampoline.S): a breakpoint. The CPU takes the exception, so
 * entry.S saves a complete pt_regs with the PSTATE the hardware put in SPSR_EL1, and
 * kretprobe_brk_handler (arch/arm64/kernel/probes/kprobes.c) runs the return handlers on it, then
 * sets regs->pc to the real return address for the eret. Nothing after the BRK ever runs.
 */
.globl __kretprobe_trampoline
__kretprobe_trampoline:
    brk #0x7                            // KRETPROBES_BRK_IMM
    brk #0x800                          // ASM_BUG(): BUG_BRK_IMM
