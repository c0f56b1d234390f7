/*
 * function_trace_call for arm64: the function tracer's ftrace_ops->func in guest code, so that
 * tracing a call runs no Python. It reserves the next record of the ring buffer (kernel/trace/
 * ring_buffer.c), stamps it with the counter clock the guest keeps itself, and stores ip,
 * parent_ip and the ftrace_regs fields ftrace_caller saved. A full buffer calls
 * ring_buffer_full, where the consumer drains it (or applies overwrite/drop).
 *
 * In: x0 = ip, x1 = parent_ip, x2 = op, x3 = fregs. Clobbers x9-x16 (caller-saved).
 */
.globl function_trace_call
function_trace_call:
    ldr x9, rb_control                  // the ring buffer's control block (lab data)
rb_reserve:
    ldp x10, x11, [x9, #RB_HEAD]        // head, nr
    cmp x10, x11
    b.hs rb_full
    ldr x12, [x9, #RB_BASE]
    mov x13, #REC_SIZE
    madd x12, x10, x13, x12             // the record
    ldr x14, [x9, #RB_CLOCK]            // trace_clock_counter
    add x14, x14, #1
    str x14, [x9, #RB_CLOCK]
    mov x15, #REC_ENTRY
    stp x15, x14, [x12, #REC_TYPE]      // type, ts
    stp x0, x1, [x12, #REC_IP]          // ip, parent_ip
    ldp x15, x16, [x3, #FREGS_X0]       // the fields ftrace_caller saved, in ftrace_regs_saved order
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
    add x10, x10, #1
    str x10, [x9, #RB_HEAD]             // commit
    ret
rb_full:
    stp x29, x30, [sp, #-16]!
    bl ring_buffer_full                 // drained: room again; drop mode: still full
    ldp x29, x30, [sp], #16
    ldp x10, x11, [x9, #RB_HEAD]
    cmp x10, x11
    b.lo rb_reserve
    ret

/* The consumer's side: its one instruction carries the lab's code hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
rb_control:                             // set once, when the buffer is made
    .quad 0
