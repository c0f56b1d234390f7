.include "macros.S"
/*
 * return_to_handler for x86_64 in 6.18 and 6.19, after arch/x86/kernel/ftrace_64.S as
 * torvalds/linux 20a0bc10272f ("x86/fgraph,bpf: Fix stack ORC unwind from kprobe_multi return
 * probe", 6.18-rc6; blob 823dbdd0eb41) left it.
 *
 * The function's `ret` popped the hooked return slot; `subq $8, %rsp` steps back over it, so the
 * slot (still holding return_to_handler's address) is a return address again for the ORC unwinder
 * (UNWIND_HINT_FUNC), which asks ftrace_graph_ret_addr() for the real one. Then the ftrace_regs
 * as before, and `movq %rsp, RSP(%rsp)`: the sp stored is the ftrace_regs' own address, taken
 * after both subtractions, 8 + FRAME_SIZE below the sp the function returned with.
 */
.globl return_to_handler
return_to_handler:
    sub rsp, 8                          // the return slot again (UNWIND_HINT_FUNC)
    return_to_handler_save
    mov [rsp+RSP], rsp                  // sp = this ftrace_regs
    return_to_handler_call popped=FRAME_SIZE+8

ftrace_return_to_handler_dispatch
