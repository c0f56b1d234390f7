/*
 * The built-in tracers' hot paths for arm64, in guest code, so that tracing a call runs no
 * Python (kernel/trace/trace_functions.c, trace_functions_graph.c): each writes its record into
 * one the ring buffer's rb_reserve hands out. Record slots are named by the layouts in
 * tracers/output/records.py, fgraph's words by those in tracers/core/fgraph.py.
 */

.include "macros.S"

/* Two saved ftrace_regs fields, FREGS_\a and the one after it, from \fregs into the \type record
 * at \rec, where they are adjacent too; through x11 and x13. */
.macro record_pair fregs, rec, type, a
    ldp x11, x13, [\fregs, #FREGS_\a]
    stp x11, x13, [\rec, #\type\()_REGS_\a]
.endm

/* The ftrace_regs fields ftrace_caller saves (ftrace_regs_saved: x0-x8, fp, lr, sp, pc). */
.macro record_fregs fregs, rec, type
    .irp a, X0, X2, X4, X6, FP, SP      // x0-x7, fp and lr, sp and pc
    record_pair \fregs, \rec, \type, \a
    .endr
    record_field \fregs, \rec, \type, X8
.endm

/* The function tracer's ftrace_ops->func: function_trace_call(ip, parent_ip, op, fregs) in
 * x0-x3. Clobbers x9-x17. */
.globl function_trace_call
function_trace_call:
    mov x17, x30
    bl rb_reserve                       // x12 = the record (0: dropped)
    mov x30, x17
    cbz x12, ftc_done
    stp x0, x1, [x12, #FN_IP]           // ip, parent
    record_fregs x3, x12, FN
    mov x11, #REC_ENTRY
    str x11, [x12, #FN_TYPE]            // committed: a stop before here leaves it unread
ftc_done:
    ret

/* function_graph's entry as the lone fgraph user (function_graph_enter_regs + its entryfunc):
 * the same push as fgraph.py's (ret, func, fp, retp; the bitmap word; the calltime as the
 * tracer's reserved data word with its header), an entry record, and the return hooked.
 * In: x0 = ip, x1 = parent_ip, x2 = op, x3 = fregs. Clobbers x9-x17. */
.globl graph_trace_entry
graph_trace_entry:
    ldr x9, fg_control
    ldr x10, [x9, #FG_CURR]
    add x11, x10, #FG_FRAME_WORDS+1     // a frame and its bitmap word
    cmp x11, #FG_MAX_OFFSET
    b.hs fg_overrun                     // no room for a frame: trace_overrun
    ldp x11, x12, [x9, #FG_DEPTH]       // depth, max_graph_depth
    add x11, x11, #1
    cmp x11, x12
    b.hs fg_done                        // deeper than max_graph_depth
    add x11, x10, #FG_PUSH_WORDS
    cmp x11, #FG_MAX_OFFSET
    b.hs fg_done                        // no room for the calltime: not traced
    mov x17, x30
    bl rb_reserve                       // x12 = the record (0: dropped), x14 = its timestamp
    mov x30, x17
    ldr x9, fg_control
    ldr x10, [x9, #FG_DEPTH]
    add x10, x10, #1                    // this call's depth
    cbz x12, ge_push
    stp x0, x1, [x12, #GRAPH_ENT_IP]    // ip, parent
    str x10, [x12, #GRAPH_ENT_DEPTH]
    record_fregs x3, x12, GRAPH_ENT
    mov x11, #REC_ENTRY
    str x11, [x12, #GRAPH_ENT_TYPE]     // committed
ge_push:
    str x10, [x9, #FG_DEPTH]
    ldr x10, [x9, #FG_CURR]
    ldr x12, [x9, #FG_STACK]
    add x12, x12, x10, lsl #3           // the frame
    ldr x13, [x3, #FREGS_FP]
    stp x1, x0, [x12, #FG_FRAME_RET]    // ret, func
    stp x13, x13, [x12, #FG_FRAME_FP]   // fp, and retp (arm64 matches frames by fp)
    str x14, [x12, #FG_PUSH_DATA]       // calltime
    ldp x15, x16, [x9, #FG_HEADER]      // the data header and bitmap words
    str x16, [x12, #FG_PUSH_BITMAP]     // above the frame
    str x15, [x12, #FG_PUSH_HEADER]     // above the calltime
    add x10, x10, #FG_PUSH_WORDS
    str x10, [x9, #FG_CURR]
    ldr x10, [x9, #FG_RETURN_TO_HANDLER]
    str x10, [x3, #FREGS_LR]            // hook the return: lr in fregs
fg_done:
    ret
fg_overrun:
    ldr x10, [x9, #FG_OVERRUN]
    add x10, x10, #1
    str x10, [x9, #FG_OVERRUN]
    ret

/* function_graph's exit as the lone fgraph user (ftrace_return_to_handler + its retfunc):
 * pop the frame, check the frame pointer (HAVE_FUNCTION_GRAPH_FP_TEST), put the real return
 * address in fregs->pc, record the return registers and the calltime. In: x0 = the exit fregs.
 * Clobbers x9-x17. */
.globl graph_trace_return
graph_trace_return:
    mov x17, x30
    ldr x10, fg_control
    ldr x11, [x10, #FG_CURR]
    cbz x11, fgraph_empty               // no frame to pop: the shadow stack is empty
    ldr x12, [x10, #FG_STACK]
    sub x13, x11, #1
    ldr x14, [x12, x13, lsl #3]         // the top word (the data header), the one below curr
    and x14, x14, #FGRAPH_FRAME_OFFSET_MASK     // its offset back to the frame (__get_offset)
    sub x13, x13, x14                   // the frame's index
    str x13, [x10, #FG_CURR]            // pop
    ldr x16, [x10, #FG_DEPTH]           // the frame's depth
    sub x14, x16, #1
    str x14, [x10, #FG_DEPTH]
    add x15, x12, x13, lsl #3           // the frame
    ldr x14, [x15, #FG_FRAME_FP]        // the fp it was entered with
    ldr x13, [x0, #FREGS_FP]
    cmp x13, x14
    b.ne fgraph_bad_fp
    ldr x14, [x15, #FG_FRAME_RET]
    str x14, [x0, #FREGS_PC]            // where to return
    bl rb_reserve                       // keeps x0, x15-x17
    mov x30, x17
    cbz x12, gtr_done
    ldp x13, x14, [x15, #FG_FRAME_RET]  // ret, func
    stp x14, x13, [x12, #GRAPH_RET_IP]  // ip = the function, parent = where it returns
    str x16, [x12, #GRAPH_RET_DEPTH]
    // The exit's fields, in pairs rather than through the generated graph_exit_fields (one
    // ldr/str each): arm64's return_to_handler saves x0-x7 and fp in every modelled release
    // (FgraphArch.return_to_handlers); test_decode checks these records against the Python path.
    .irp a, X0, X2, X4, X6              // x0-x7 ...
    record_pair x0, x12, GRAPH_RET, \a
    .endr
    ldr x13, [x0, #FREGS_FP]            // ... fp and pc, adjacent in the record only
    ldr x14, [x0, #FREGS_PC]
    stp x13, x14, [x12, #GRAPH_RET_REGS_FP]
    ldr x13, [x15, #FG_PUSH_DATA]       // calltime
    str x13, [x12, #GRAPH_RET_CALLTIME]
    mov x13, #REC_EXIT
    str x13, [x12, #GRAPH_RET_TYPE]     // committed
gtr_done:
    ret

/* A frame-pointer mismatch: its one instruction carries a lab hook that stops with an error,
 * as the kernel's ftrace_graph_stop() + WARN does. */
.globl fgraph_bad_fp
fgraph_bad_fp:
    ret

/* No frame to pop (return_to_handler entered without a hooked return): the kernel's
 * ftrace_pop_return_trace() stops fgraph with a WARN; the lab's hook stops with an error. */
.globl fgraph_empty
fgraph_empty:
    ret

.balign 8
fg_control:                             // fgraph's task state, set once
    .quad 0
