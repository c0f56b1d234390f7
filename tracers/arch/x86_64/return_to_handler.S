/*
 * return_to_handler for x86_64, after arch/x86/kernel/ftrace_64.S (6.14+: fgraph passes ftrace_regs).
 *
 * fgraph replaced a traced function's return address on the stack with this address, so the
 * function's `ret` lands here. Only the return registers (rax, rdx) and rbp are saved, in a
 * struct ftrace_regs; ftrace_return_to_handler(fregs) runs the exit callbacks and stores the real
 * return address in fregs->ip, and we return there. (The kernel returns with a call/overwrite/ret
 * sequence for IBT and return-stack balance; a push/ret is equivalent here.)
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

/* The graph exit dispatch, ftrace_return_to_handler(fregs) (kernel/trace/fgraph.c): fgraph pops
 * the shadow stack and runs the fgraph_ops retfuncs in the lab. As ftrace_ops_list_func, it
 * leaves its argument in lab data and jumps to the block that carries the lab's hook. */
.globl ftrace_return_to_handler
ftrace_return_to_handler:
    mov rax, [rip+return_args]
    mov [rax+RETURN_ARGS_FREGS], rdi
    jmp ftrace_return_to_handler_lab
.globl ftrace_return_to_handler_lab
ftrace_return_to_handler_lab:
    ret

.balign 8
return_args:                            // where ftrace_return_to_handler leaves its argument
    .quad 0
