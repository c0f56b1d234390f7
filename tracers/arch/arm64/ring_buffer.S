/*
 * The trace ring buffer's writer side for arm64 (kernel/trace/ring_buffer.c, much simplified):
 * the tracers' guest code reserves each record here, stamped with the counter clock the guest
 * keeps itself. A full buffer calls ring_buffer_full, where the consumer drains it (or applies
 * overwrite/drop). Python reads the records in bulk.
 */

/* rb_reserve: the next record, its timestamp written and its type 0 (reserved, not committed). Out: x12 = the record (0: dropped),
 * x14 = the timestamp. Clobbers x9-x11, x13; keeps every other register. */
.globl rb_reserve
rb_reserve:
    ldr x9, rb_control                  // the ring buffer's control block (lab data)
    ldr x14, [x9, #RB_CLOCK]            // the clock, read in rb_reserve's first block (insns: counted to it)
rb_retry:
    ldp x10, x11, [x9, #RB_HEAD]        // head, nr
    cmp x10, x11
    b.hs rb_full
    ldp x12, x13, [x9, #RB_BASE]        // base, record_size
    madd x12, x10, x13, x12
    add x14, x14, #1                    // trace_clock_counter
    str x14, [x9, #RB_CLOCK]
    stp xzr, x14, [x12, #HDR_TYPE]      // not committed (the caller's type store commits it), ts
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

/* The consumer's side: its one instruction carries the lab's hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
rb_control:                             // set once, when the buffer is made
    .quad 0
