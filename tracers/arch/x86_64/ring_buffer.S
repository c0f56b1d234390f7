/*
 * The trace ring buffer's writer side for x86_64 (kernel/trace/ring_buffer.c, much simplified):
 * the tracers' guest code reserves each record here, stamped with the counter clock the guest
 * keeps itself. A full buffer calls ring_buffer_full, where the consumer drains it (or applies
 * overwrite/drop). Python reads the records in bulk.
 */

/* rb_reserve: the next record, its timestamp written and its type 0 (reserved, not committed). Out: rax = the record (0: dropped),
 * r11 = the timestamp. Clobbers r10. */
.globl rb_reserve
rb_reserve:
    mov r10, [rip+rb_control]           // the ring buffer's control block (lab data)
    mov r11, [r10+RB_CLOCK]             // the clock, read in rb_reserve's first block (insns: counted to it)
rb_retry:
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jae rb_full
    imul rax, [r10+RB_RECORD_SIZE]
    add rax, [r10+RB_BASE]
    add r11, 1                          // trace_clock_counter
    mov [r10+RB_CLOCK], r11
    mov [rax+HDR_TS], r11
    mov qword ptr [rax+HDR_TYPE], 0     // not committed: the caller's type store commits it
    add qword ptr [r10+RB_HEAD], 1      // the caller fills it before anything can read it
    ret
rb_full:
    call ring_buffer_full               // drained: room again; drop mode: still full
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jb rb_retry
    xor eax, eax
    xor r11d, r11d
    ret

/* The consumer's side: its one instruction carries the lab's hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
rb_control:                             // set once, when the buffer is made
    .quad 0
