/*
 * Register save/restore sequences shared by the arm64 trampolines (the kernel's kernel_entry /
 * kernel_exit and save_all_base_regs). Offsets are asm-offsets names from the lab's tables. Each
 * stores with `op` = stp and loads back with `op` = ldp.
 */

/* x0-x29 and a pt_regs at sp. */
.macro pt_regs_x0_x29 op
    \op x0, x1, [sp, #S_X0]
    \op x2, x3, [sp, #S_X2]
    \op x4, x5, [sp, #S_X4]
    \op x6, x7, [sp, #S_X6]
    \op x8, x9, [sp, #S_X8]
    \op x10, x11, [sp, #S_X10]
    \op x12, x13, [sp, #S_X12]
    \op x14, x15, [sp, #S_X14]
    \op x16, x17, [sp, #S_X16]
    \op x18, x19, [sp, #S_X18]
    \op x20, x21, [sp, #S_X20]
    \op x22, x23, [sp, #S_X22]
    \op x24, x25, [sp, #S_X24]
    \op x26, x27, [sp, #S_X26]
    \op x28, x29, [sp, #S_X28]
.endm

/* x0-x7 (the argument and return registers) and a ftrace_regs at sp. */
.macro fregs_x0_x7 op
    \op x0, x1, [sp, #FREGS_X0]
    \op x2, x3, [sp, #FREGS_X2]
    \op x4, x5, [sp, #FREGS_X4]
    \op x6, x7, [sp, #FREGS_X6]
.endm
/*
 * Register save/restore sequences shared by the arm64 trampolines (the kernel's kernel_entry /
 * kernel_exit and save_all_base_regs). Offsets are asm-offsets names from the lab's tables. Each
 * stores with `op` = stp and loads back with `op` = ldp.
 */

/* x0-x29 and a pt_regs at sp. */
.macro pt_regs_x0_x29 op
    \op x0, x1, [sp, #S_X0]
    \op x2, x3, [sp, #S_X2]
    \op x4, x5, [sp, #S_X4]
    \op x6, x7, [sp, #S_X6]
    \op x8, x9, [sp, #S_X8]
    \op x10, x11, [sp, #S_X10]
    \op x12, x13, [sp, #S_X12]
    \op x14, x15, [sp, #S_X14]
    \op x16, x17, [sp, #S_X16]
    \op x18, x19, [sp, #S_X18]
    \op x20, x21, [sp, #S_X20]
    \op x22, x23, [sp, #S_X22]
    \op x24, x25, [sp, #S_X24]
    \op x26, x27, [sp, #S_X26]
    \op x28, x29, [sp, #S_X28]
.endm

/* x0-x7 (the argument and return registers) and a ftrace_regs at sp. */
.macro fregs_x0_x7 op
    \op x0, x1, [sp, #FREGS_X0]
    \op x2, x3, [sp, #FREGS_X2]
    \op x4, x5, [sp, #FREGS_X4]
    \op x6, x7, [sp, #FREGS_X6]
.endm

/* One saved ftrace_regs field (FREGS_\a) from \fregs into the \type record at \rec, through x11. */
.macro record_field fregs, rec, type, a
    ldr x11, [\fregs, #FREGS_\a]
    str x11, [\rec, #\type\()_REGS_\a]
.endm

/* x9 = the value the ip table (tracers/core/ip_table.py) whose header is at x9 holds for the ip in
 * x0, else a branch to \missing: hash_64(ip, bits) (include/linux/hash.h, the kernel's
 * ftrace_hash_key) is the home slot, probed linearly; \label names the loop. x14 = the slot.
 * Clobbers x10-x16. */
.macro ip_table_find missing, label
    mov x10, #GOLDEN_RATIO_64_0
    movk x10, #GOLDEN_RATIO_64_1, lsl #16
    movk x10, #GOLDEN_RATIO_64_2, lsl #32
    movk x10, #GOLDEN_RATIO_64_3, lsl #48
    mul x10, x0, x10
    ldr x11, [x9, #IP_TABLE_SHIFT]
    lsr x10, x10, x11                   // the home slot
    ldr x12, [x9, #IP_TABLE_MASK]
    ldr x13, [x9, #IP_TABLE_SLOTS]
    mov x15, #IP_SLOT_SIZE
\label:
    madd x14, x10, x15, x13             // the slot
    ldr x16, [x14, #IP_SLOT_IP]
    cmp x16, x0
    b.eq \label\()_found
    cbz x16, \missing                   // an empty slot: ip is not in the table
    add x10, x10, #1
    and x10, x10, x12                   // the next slot, wrapping
    b \label
\label\()_found:
    ldr x9, [x14, #IP_SLOT_VALUE]
.endm

/* rb_reserve's taking of the record at head x10 (ring_buffer.S): its timestamp (the clock in x14,
 * plus one: trace_clock_counter) and type 0, not committed (the writer's type store commits it). */
.macro rb_take
    ldp x12, x13, [x9, #RB_BASE]        // base, record_size
    madd x12, x10, x13, x12
    add x14, x14, #1
    str x14, [x9, #RB_CLOCK]
    stp xzr, x14, [x12, #HDR_TYPE]      // type, ts
    add x10, x10, #1
    str x10, [x9, #RB_HEAD]             // the writer fills it before anything can read it
.endm

/* rb_reserve in the writer's own code, x9 = the ring buffer's control block: x12 = the next
 * record, x14 its timestamp, or a branch to \full when the buffer is full (x9 and x14 = the clock,
 * as rb_reserve_full takes them). The clock is read in the block this is in: an insns timestamp
 * counts the instructions before that block. Clobbers x10, x11, x13. */
.macro rb_reserve_inline full
    ldr x14, [x9, #RB_CLOCK]
    ldp x10, x11, [x9, #RB_HEAD]        // head, nr
    cmp x10, x11
    b.hs \full
    rb_take
.endm
