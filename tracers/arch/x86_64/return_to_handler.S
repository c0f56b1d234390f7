.include "macros.S"
/*
 * return_to_handler for x86_64 in 6.14-6.17, after arch/x86/kernel/ftrace_64.S (6.14+: fgraph
 * passes ftrace_regs; blob 367da3638167, the file 20a0bc10272f changed).
 *
 * fgraph replaced a traced function's return address on the stack with this address, so the
 * function's `ret` lands here. Only the return registers (rax, rdx) and rbp are saved, in a
 * struct ftrace_regs (its sp slot holds whatever the stack held there);
 * ftrace_return_to_handler(fregs) runs the exit callbacks and stores the real return address in
 * fregs->ip, and we return there. (The kernel returns with a call/overwrite/ret sequence for IBT
 * and return-stack balance; a push/ret is equivalent here.)
 */
.globl return_to_handler
return_to_handler:
    sub rsp, FRAME_SIZE
    mov [rsp+RAX], rax
    mov [rsp+RDX], rdx
    mov [rsp+RBP], rbp
    mov rdi, rsp                        // fregs
.globl return_to_handler_call
return_to_handler_call:
    call ftrace_return_to_handler
    mov rdi, [rsp+RIP]                  // the real return address
    mov rax, [rsp+RAX]
    mov rdx, [rsp+RDX]
    add rsp, FRAME_SIZE
    push rdi
    ret

ftrace_return_to_handler_dispatch
