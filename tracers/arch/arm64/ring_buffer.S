/*
 * The trace ring buffer's writer side for arm64 (kernel/trace/ring_buffer.c, much simplified):
 * the tracers' guest code reserves each record here, stamped with the counter clock the guest
 * keeps itself. A full buffer calls ring_buffer_full, where the consumer drains it (or applies
 * overwrite/drop). Python reads the records in bulk.
 */

.include "macros.S"

/* rb_reserve: the next record, its timestamp written and its type 0 (reserved, not committed). Out: x12 = the record (0: dropped),
 * x14 = the timestamp. Clobbers x9-x11, x13; keeps every other register. Probe events' handlers
 * inline it (rb_reserve_inline). */
.globl rb_reserve
rb_reserve:
    ldr x9, rb_control                  // the ring buffer's control block (lab data)
    rb_reserve_inline rb_reserve_full
    ret

/* The buffer is full (rb_reserve_inline branches or calls here, x9 and x14 as it loaded them): the
 * consumer drains it, then the record is taken as rb_reserve takes it; in drop mode the buffer is
 * still full, and x12 = 0. */
.globl rb_reserve_full
rb_reserve_full:
    stp x29, x30, [sp, #-16]!
    bl ring_buffer_full
    ldp x29, x30, [sp], #16
    ldp x10, x11, [x9, #RB_HEAD]
    cmp x10, x11
    b.hs rb_dropped
    rb_take
    ret
rb_dropped:
    mov x12, #0
    mov x14, #0
    ret

/* The consumer's side: its one instruction carries the lab's hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
.globl rb_control
rb_control:                             // set once, when the buffer is made
    .quad 0
