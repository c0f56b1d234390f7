/*
 * The built-in tracers' hot paths for arm64, in guest code, so that tracing a call runs no
 * Python: records go to the ring buffer (kernel/trace/ring_buffer.c), stamped with the counter
 * clock the guest keeps itself. A full buffer calls ring_buffer_full, where the consumer drains
 * it (or applies overwrite/drop). Python reads the records in bulk.
 */

/* rb_reserve: the next record, its timestamp written. Out: x12 = the record (0: dropped),
 * x14 = the timestamp. Clobbers x9-x11, x13. */
rb_reserve:
    ldr x9, rb_control                  // the ring buffer's control block (lab data)
rb_retry:
    ldp x10, x11, [x9, #RB_HEAD]        // head, nr
    cmp x10, x11
    b.hs rb_full
    ldr x12, [x9, #RB_BASE]
    mov x13, #REC_SIZE
    madd x12, x10, x13, x12
    ldr x14, [x9, #RB_CLOCK]            // trace_clock_counter
    add x14, x14, #1
    str x14, [x9, #RB_CLOCK]
    str x14, [x12, #REC_TS]
    add x10, x10, #1
    str x10, [x9, #RB_HEAD]             // the caller fills it before anything can read it
    ret
rb_full:
    stp x29, x30, [sp, #-16]!
    bl ring_buffer_full                 // drained: room again; drop mode: still full
    ldp x29, x30, [sp], #16
    ldp x10, x11, [x9, #RB_HEAD]
    cmp x10, x11
    b.lo rb_retry
    mov x12, #0
    mov x14, #0
    ret

/* The function tracer's ftrace_ops->func: function_trace_call(ip, parent_ip, op, fregs) in
 * x0-x3. Records ip, parent_ip and the ftrace_regs fields ftrace_caller saved, in
 * ftrace_regs_saved order. Returns the timestamp in x0. Clobbers x9-x17. */
.globl function_trace_call
function_trace_call:
    mov x17, x30
    bl rb_reserve
    mov x30, x17
    cbz x12, ftc_done
    mov x15, #REC_ENTRY
    str x15, [x12, #REC_TYPE]
    stp x0, x1, [x12, #REC_IP]          // ip, parent_ip
    ldp x15, x16, [x3, #FREGS_X0]
    stp x15, x16, [x12, #REC_FIELDS]
    ldp x15, x16, [x3, #FREGS_X2]
    stp x15, x16, [x12, #REC_FIELDS+16]
    ldp x15, x16, [x3, #FREGS_X4]
    stp x15, x16, [x12, #REC_FIELDS+32]
    ldp x15, x16, [x3, #FREGS_X6]
    stp x15, x16, [x12, #REC_FIELDS+48]
    ldr x15, [x3, #FREGS_X8]
    ldr x16, [x3, #FREGS_FP]
    stp x15, x16, [x12, #REC_FIELDS+64]
    ldp x15, x16, [x3, #FREGS_LR]       // lr, sp
    stp x15, x16, [x12, #REC_FIELDS+80]
    ldr x15, [x3, #FREGS_PC]
    str x15, [x12, #REC_FIELDS+96]
ftc_done:
    mov x0, x14
    ret

/* function_graph's entry as the lone fgraph user (function_graph_enter_regs + its entryfunc):
 * the same shadow-stack frame fgraph.py pushes (ret, func, fp, retp; the calltime as the
 * tracer's reserved data word with its header; the bitmap word), an entry record, and the
 * return hooked. In: x0 = ip, x1 = parent_ip, x2 = op, x3 = fregs. */
.globl graph_trace_entry
graph_trace_entry:
    ldr x9, fg_control
    ldr x10, [x9, #FG_CURR]
    add x11, x10, #FG_FRAME_WORDS+1
    cmp x11, #FG_MAX_OFFSET
    b.hs fg_overrun                     // no room for a frame: trace_overrun
    ldp x11, x12, [x9, #FG_DEPTH]       // depth, max_graph_depth
    add x11, x11, #1
    cmp x11, x12
    b.hs fg_done                        // deeper than max_graph_depth
    add x11, x10, #FG_FRAME_WORDS+3
    cmp x11, #FG_MAX_OFFSET
    b.hs fg_done                        // no room for the calltime: not traced
    stp x29, x30, [sp, #-48]!
    stp x0, x1, [sp, #16]
    str x3, [sp, #32]
    bl function_trace_call              // the entry record; x0 = its timestamp
    mov x13, x0
    ldp x0, x1, [sp, #16]
    ldr x3, [sp, #32]
    ldp x29, x30, [sp], #48
    ldr x9, fg_control
    ldr x10, [x9, #FG_CURR]
    ldr x12, [x9, #FG_STACK]
    add x12, x12, x10, lsl #3           // the frame
    ldr x14, [x3, #FREGS_FP]
    stp x1, x0, [x12]                   // ret, func
    stp x14, x14, [x12, #16]            // fp, and retp (arm64 matches frames by fp)
    str x13, [x12, #32]                 // calltime
    ldp x14, x15, [x9, #FG_HEADER]      // the data header and bitmap words
    stp x14, x15, [x12, #40]
    add x10, x10, #FG_FRAME_WORDS+3
    str x10, [x9, #FG_CURR]
    ldr x10, [x9, #FG_DEPTH]
    add x10, x10, #1
    str x10, [x9, #FG_DEPTH]
    ldr x10, [x9, #FG_RETURN]
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
 * Clobbers x9-x16. */
.globl graph_trace_return
graph_trace_return:
    mov x16, x30
    ldr x10, fg_control
    ldr x11, [x10, #FG_CURR]
    ldr x12, [x10, #FG_STACK]
    sub x13, x11, #1
    ldr x14, [x12, x13, lsl #3]         // the bitmap word
    and x14, x14, #0x3ff                // its offset back to the frame
    sub x13, x13, x14                   // the frame's index
    str x13, [x10, #FG_CURR]            // pop
    ldr x14, [x10, #FG_DEPTH]
    sub x14, x14, #1
    str x14, [x10, #FG_DEPTH]
    add x15, x12, x13, lsl #3           // the frame
    ldr x14, [x15, #16]                 // the fp it was entered with
    ldr x13, [x0, #FREGS_FP]
    cmp x13, x14
    b.ne fgraph_bad_fp
    ldr x14, [x15]
    str x14, [x0, #FREGS_PC]            // where to return
    bl rb_reserve                       // keeps x0, x15, x16
    mov x30, x16
    cbz x12, gtr_done
    mov x13, #REC_EXIT
    str x13, [x12, #REC_TYPE]
    ldp x13, x14, [x15]                 // ret, func
    stp x14, x13, [x12, #REC_IP]        // ip = the function, parent = where it returns
    ldp x13, x14, [x0, #FREGS_X0]       // the exit fields, in fgraph_exit_saved order
    stp x13, x14, [x12, #REC_FIELDS]
    ldp x13, x14, [x0, #FREGS_X2]
    stp x13, x14, [x12, #REC_FIELDS+16]
    ldp x13, x14, [x0, #FREGS_X4]
    stp x13, x14, [x12, #REC_FIELDS+32]
    ldp x13, x14, [x0, #FREGS_X6]
    stp x13, x14, [x12, #REC_FIELDS+48]
    ldr x13, [x0, #FREGS_FP]
    ldr x14, [x0, #FREGS_PC]
    stp x13, x14, [x12, #REC_FIELDS+64]
    ldr x13, [x15, #32]                 // calltime
    str x13, [x12, #REC_FIELDS+80]
gtr_done:
    ret

/* A frame-pointer mismatch: its one instruction carries a lab hook that stops with an error,
 * as the kernel's ftrace_graph_stop() + WARN does. */
.globl fgraph_bad_fp
fgraph_bad_fp:
    ret

/* The consumer's side: its one instruction carries the lab's hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
rb_control:                             // set once, when the buffer is made
    .quad 0
fg_control:                             // set once, when fgraph is attached
    .quad 0
