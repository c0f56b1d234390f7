.include "macros.S"
/*
 * return_to_handler for x86_64 from 7.0, after arch/x86/kernel/ftrace_64.S as torvalds/linux
 * 8bc11700e0d2 ("x86/fgraph: Fix return_to_handler regs.rsp value", 7.0 merge window; read in
 * its 6.18.y and 6.19.y stable backports, 823dbdd0eb41..ae94f7b0fdf1 and a132608265f6..62c1c93aa1c6)
 * left it.
 *
 * 20a0bc10272f's trampoline, but `movq %rsp, %rdi` comes first and `movq %rdi, RSP(%rsp)` stores
 * that: the sp stored is the one the function returned with (the sp after its `ret`), so perf can
 * unwind from the regs' ip, sp and bp (aea251799998 sets X86_EFLAGS_FIXED for that).
 */
.globl return_to_handler
return_to_handler:
    mov rdi, rsp                        // the sp the function returned with
    sub rsp, 8                          // the return slot again (UNWIND_HINT_FUNC)
    return_to_handler_save
    mov [rsp+RSP], rdi
    return_to_handler_call popped=FRAME_SIZE+8

ftrace_return_to_handler_dispatch
