.include "macros.S"
/*
 * return_to_handler for arm64, after arch/arm64/kernel/entry-ftrace.S (6.14+: fgraph passes
 * ftrace_regs).
 *
 * fgraph replaced the lr saved in a traced function's ftrace_regs with this address, so the
 * function's `ret` lands here. Only x0-x7 (the return registers) and x29 are saved, in a struct
 * ftrace_regs; ftrace_return_to_handler(fregs) checks the frame pointer, runs the exit callbacks
 * and stores the real return address in fregs->pc, and we return there.
 */
.globl return_to_handler
return_to_handler:
    sub sp, sp, #FREGS_SIZE
    fregs_x0_x7 stp
    str x29, [sp, #FREGS_FP]
    mov x0, sp                          // fregs
.globl return_to_handler_call
return_to_handler_call:
    bl ftrace_return_to_handler
    ldr x30, [sp, #FREGS_PC]            // the real return address
    fregs_x0_x7 ldp
    add sp, sp, #FREGS_SIZE
    ret

/* The graph exit dispatch, ftrace_return_to_handler(fregs) (kernel/trace/fgraph.c): fgraph pops
 * the shadow stack and runs the fgraph_ops retfuncs in the lab. As ftrace_ops_list_func, it
 * leaves its argument in lab data and branches to the block that carries the lab's hook. */
.globl ftrace_return_to_handler
ftrace_return_to_handler:
    ldr x9, return_args
    str x0, [x9, #RETURN_ARGS_FREGS]
    b ftrace_return_to_handler_lab
.globl ftrace_return_to_handler_lab
ftrace_return_to_handler_lab:
    ret

.balign 8
return_args:                            // where ftrace_return_to_handler leaves its argument
    .quad 0
