.include "macros.S"
/*
 * return_to_handler for x86_64 in 6.14-6.17, after arch/x86/kernel/ftrace_64.S (6.14+: fgraph
 * passes ftrace_regs; blob 367da3638167, the file 20a0bc10272f changed).
 *
 * fgraph replaced a traced function's return address on the stack with this address, so the
 * function's `ret` lands here. Only the return registers (rax, rdx) and rbp are saved, in a
 * struct ftrace_regs (its sp slot holds whatever the stack held there);
 * ftrace_return_to_handler(fregs) runs the exit callbacks and stores the real return address in
 * fregs->ip, and we return there.
 */
.globl return_to_handler
return_to_handler:
    return_to_handler_save
    return_to_handler_call

ftrace_return_to_handler_dispatch
