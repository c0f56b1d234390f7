.include "macros.S"
/*
 * arch_rethook_trampoline for x86_64, after arch/x86/kernel/rethook.c.
 *
 * rethook replaced a function's return address on the stack with this address, so its `ret`
 * lands here. x86 can build a complete pt_regs without an exception: pushfq gives the flags,
 * cs/ss are the fixed kernel selectors, and sp is fixed up by the callback.
 */
.globl arch_rethook_trampoline
arch_rethook_trampoline:
    push arch_rethook_trampoline        // a fake return address, so unwinders recognise us
    push KERNEL_DS                      // ss
    push rsp                            // sp - 16: the callback adds 16
    pushfq                              // flags
    sub rsp, 24                         // skip cs, ip, orig_ax (the callback fills them)
    push_regs                           // pt_regs from the top down
    mov rdi, rsp                        // regs
    call arch_rethook_trampoline_callback
    pop_regs
    add rsp, 24                         // orig_ax, ip, cs
    add rsp, 16                         // flags and sp: the callback copied flags into the ss slot
    popfq
    ret                                 // to the real return address, written over the fake one

/* The callback (arch_rethook_trampoline_callback(regs)): first the lab's guest code
 * (rethook.S's rethook_guest_callback, at callback_guest), which handles a return whose nodes all
 * have guest handlers and returns 0; else it runs in the lab: it leaves regs in lab data and jumps
 * to the block that carries the lab's hook, which fixes up cs, ip, orig_ax and sp, runs
 * rethook_trampoline_handler(regs, frame) and copies flags into the ss slot, as the kernel's C
 * does. (A copy of this file without callback_guest keeps every return on the lab's hook.) */
.globl arch_rethook_trampoline_callback
arch_rethook_trampoline_callback:
    call qword ptr [rip+callback_guest]
    test rax, rax
    jz rethook_callback_done
    mov rax, [rip+callback_args]
    mov [rax+CALLBACK_ARGS_REGS], rdi
    jmp rethook_callback_lab
.globl rethook_callback_lab
rethook_callback_lab:
    ret
rethook_callback_done:
    ret

.balign 8
callback_args:                          // where arch_rethook_trampoline_callback leaves regs
    .quad 0
callback_guest:                         // the guest handler's address, set once
    .quad 0
