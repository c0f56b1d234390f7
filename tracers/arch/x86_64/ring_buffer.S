/*
 * The trace ring buffer's writer side for x86_64 (kernel/trace/ring_buffer.c, much simplified):
 * the tracers' guest code reserves each record here, stamped with the counter clock the guest
 * keeps itself. A full buffer calls ring_buffer_full, where the consumer drains it (or applies
 * overwrite/drop). Python reads the records in bulk.
 */

.include "macros.S"

/* rb_reserve: the next record, its timestamp written and its type 0 (reserved, not committed). Out: rax = the record (0: dropped),
 * r11 = the timestamp. Clobbers r10. Probe events' handlers inline it (rb_reserve_inline). */
.globl rb_reserve
rb_reserve:
    mov r10, [rip+rb_control]           // the ring buffer's control block (lab data)
    rb_reserve_inline rb_reserve_full
    ret

/* The buffer is full (rb_reserve_inline jumps or calls here, r10 and r11 as it loaded them): the
 * consumer drains it, then the record is taken as rb_reserve takes it; in drop mode the buffer is
 * still full, and rax = 0. */
.globl rb_reserve_full
rb_reserve_full:
    call ring_buffer_full
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jae rb_dropped
    rb_take
    ret
rb_dropped:
    xor eax, eax
    xor r11d, r11d
    ret

/* The consumer's side: its one instruction carries the lab's hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
.globl rb_control
rb_control:                             // set once, when the buffer is made
    .quad 0
