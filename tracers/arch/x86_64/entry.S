.include "macros.S"
/*
 * int3 entry for x86_64, after arch/x86/entry/entry_64.S (idtentry, PUSH_AND_CLEAR_REGS).
 *
 * The lab's CPU model takes an int3 as the hardware does through IDT gate 3 (ss, rsp, rflags,
 * cs, rip pushed, IF cleared); from there everything is guest code. The pt_regs is complete: the
 * general registers, orig_ax = -1 (no error code), and the hardware's own frame.
 */
.globl asm_exc_int3
.globl trap_vector
asm_exc_int3:
trap_vector:                            // what the lab's CPU model enters (arch-neutral name)
    push -1                             // orig_ax
    /* idtentry X86_TRAP_BP: from kernel mode, copy the frame 6 words down, leaving a 48-byte gap
     * under the interrupted stack for the int3 handler to emulate a call (int3_emulate_push). */
    test byte ptr [rsp+CS-ORIG_RAX], 3
    jnz .Lfrom_usermode_no_gap
    push qword ptr [rsp+40]
    push qword ptr [rsp+40]
    push qword ptr [rsp+40]
    push qword ptr [rsp+40]
    push qword ptr [rsp+40]
    push qword ptr [rsp+40]
.Lfrom_usermode_no_gap:
    push_regs                           // pt_regs from the top down
    mov rdi, rsp                        // regs
    call do_int3
    pop_regs
    add rsp, 8                          // orig_ax
    iretq                               // handlers may have changed ip, flags and sp

/* The C side (do_int3(regs) -> kprobe_int3_handler), where kprobes run in the lab: it leaves regs
 * in lab data and jumps to trap_dispatch, whose block carries the lab's hook. */
.globl do_int3
.globl trap_handler
do_int3:
trap_handler:                           // (arch-neutral name)
    mov rax, [rip+trap_args]
    mov [rax+TRAP_ARGS_REGS], rdi
    jmp trap_dispatch
.globl trap_dispatch
trap_dispatch:
    ret

.balign 8
trap_args:                              // where do_int3 leaves regs
    .quad 0
