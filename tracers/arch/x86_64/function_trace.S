/*
 * The built-in tracers' hot paths for x86_64, in guest code, so that tracing a call runs no
 * Python (kernel/trace/trace_functions.c, trace_functions_graph.c): each writes its record into
 * one the ring buffer's rb_reserve hands out. Record slots are named by the layouts in
 * tracers/output/records.py, fgraph's words by those in tracers/core/fgraph.py; the macro
 * graph_exit_fields comes from there too (Records.asm_macros), with the release's exit fields.
 */

.include "macros.S"

/* The ftrace_regs fields ftrace_caller saves (ftrace_regs_saved). */
.macro record_fregs fregs, rec, type
    .irp m, AX, CX, DX, SI, DI, R8, R9, BP, IP, SP
    record_field \fregs, \rec, \type, \m
    .endr
.endm

/* The function tracer's ftrace_ops->func: function_trace_call(ip, parent_ip, op, fregs) with
 * rdi, rsi, rdx, rcx. Clobbers rax, r10, r11. */
.globl function_trace_call
function_trace_call:
    call rb_reserve
    test rax, rax
    jz ftc_done
    mov [rax+FN_IP], rdi
    mov [rax+FN_PARENT], rsi
    record_fregs rcx, rax, FN
    mov qword ptr [rax+FN_TYPE], REC_ENTRY      // committed: a stop before here leaves it unread
ftc_done:
    ret

/* function_graph's entry as the lone fgraph user (function_graph_enter_regs + its entryfunc):
 * the same push as fgraph.py's (ret, func, retp; the bitmap word; the calltime as the tracer's
 * reserved data word with its header), an entry record, and the return hooked.
 * In: rdi = ip, rsi = parent_ip, rdx = op, rcx = fregs. Clobbers rax, rdx, r8-r11. */
.globl graph_trace_entry
graph_trace_entry:
    mov r10, [rip+fg_control]
    mov rax, [r10+FG_CURR]
    add rax, FG_FRAME_WORDS+1           // a frame and its bitmap word
    cmp rax, FG_MAX_OFFSET
    jae fg_overrun                      // no room for a frame: trace_overrun
    mov rax, [r10+FG_DEPTH]
    add rax, 1
    cmp rax, [r10+FG_MAX_DEPTH]
    jae fg_done                         // deeper than max_graph_depth
    mov rax, [r10+FG_CURR]
    add rax, FG_PUSH_WORDS
    cmp rax, FG_MAX_OFFSET
    jae fg_done                         // no room for the calltime: not traced
    call rb_reserve                     // rax = the record (0: dropped), r11 = its timestamp
    mov r8, r11                         // the calltime
    mov r10, [rip+fg_control]
    mov r9, [r10+FG_DEPTH]
    add r9, 1                           // this call's depth
    test rax, rax
    jz ge_push
    mov [rax+GRAPH_ENT_IP], rdi
    mov [rax+GRAPH_ENT_PARENT], rsi
    mov [rax+GRAPH_ENT_DEPTH], r9
    record_fregs rcx, rax, GRAPH_ENT
    mov qword ptr [rax+GRAPH_ENT_TYPE], REC_ENTRY   // committed
ge_push:
    mov r11, [r10+FG_CURR]
    shl r11, 3
    add r11, [r10+FG_STACK]             // the frame
    mov [r11+FG_FRAME_RET], rsi
    mov [r11+FG_FRAME_FUNC], rdi
    mov rdx, [rcx+RSP]
    mov [r11+FG_FRAME_RETP], rdx        // the return slot
    mov rax, [r10+FG_BITMAP]
    mov [r11+FG_PUSH_BITMAP], rax
    mov [r11+FG_PUSH_DATA], r8
    mov rax, [r10+FG_HEADER]
    mov [r11+FG_PUSH_HEADER], rax
    add qword ptr [r10+FG_CURR], FG_PUSH_WORDS
    mov [r10+FG_DEPTH], r9
    mov rax, [r10+FG_RETURN_TO_HANDLER]
    mov [rdx], rax                      // hook the return: the slot now says return_to_handler
fg_done:
    ret
fg_overrun:
    add qword ptr [r10+FG_OVERRUN], 1
    ret

/* function_graph's exit as the lone fgraph user (ftrace_return_to_handler + its retfunc):
 * pop the frame, put the real return address in fregs->ip, record the return registers and
 * the calltime. In: rdi = the exit fregs. Clobbers rax, rdx, r10, r11 (rcx is kept, so that
 * the guest and the Python paths leave the same registers behind). */
.globl graph_trace_return
graph_trace_return:
    push rcx
    mov r10, [rip+fg_control]
    mov rax, [r10+FG_CURR]
    test rax, rax
    jz fgraph_empty                     // no frame to pop: the shadow stack is empty
    mov rcx, [r10+FG_STACK]
    mov rdx, [rcx+rax*8-8]              // the top word (the data header), the one below curr
    and rdx, FGRAPH_FRAME_OFFSET_MASK   // its offset back to the frame (__get_offset)
    sub rax, rdx
    sub rax, 1                          // the frame's index
    mov [r10+FG_CURR], rax              // pop
    mov rdx, [r10+FG_DEPTH]             // the frame's depth
    sub qword ptr [r10+FG_DEPTH], 1
    lea rcx, [rcx+rax*8]                // the frame
    mov rax, [rcx+FG_FRAME_RET]
    mov [rdi+RIP], rax                  // where to return
    call rb_reserve
    test rax, rax
    jz gtr_done
    mov r11, [rcx+FG_FRAME_FUNC]
    mov [rax+GRAPH_RET_IP], r11
    mov r11, [rcx+FG_FRAME_RET]
    mov [rax+GRAPH_RET_PARENT], r11     // where it returns
    mov [rax+GRAPH_RET_DEPTH], rdx
    graph_exit_fields rdi, rax          // the exit's fields (the release's return_to_handler saved)
    mov r11, [rcx+FG_PUSH_DATA]
    mov [rax+GRAPH_RET_CALLTIME], r11
    mov qword ptr [rax+GRAPH_RET_TYPE], REC_EXIT    // committed
gtr_done:
    pop rcx
    ret

/* No frame to pop (return_to_handler entered without a hooked return): the kernel's
 * ftrace_pop_return_trace() stops fgraph with a WARN; the lab's hook stops with an error. */
.globl fgraph_empty
fgraph_empty:
    ret

.balign 8
fg_control:                             // fgraph's task state, set once
    .quad 0
