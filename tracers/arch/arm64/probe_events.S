/*
 * Probe events' handlers for arm64 in guest code (kernel/trace/trace_fprobe.c fentry_trace_func,
 * fexit_trace_func; trace_probe_tmpl.h process_fetch_insn): each hit writes one record (the
 * layouts of tracers/output/probe_records.py), its fetchargs fetched by the program
 * tracers/probe_events/program.py compiled. Called by the guest fprobe dispatch (fprobe.S) as
 * handler(data x0, ip x1, ret_ip x2, fregs x3, entry_data x4); each returns x0 = 0 and may
 * clobber x0-x17.
 */

.include "macros.S"

/* An f event's entry: data = its program. */
.globl probe_entry_event
probe_entry_event:
    mov x17, x30
    mov x16, x0                         // the program
    bl rb_reserve                       // x12 = the record (0: dropped)
    cbz x12, pe_done
    ldr x11, [x16, #PROG_EVENT]
    str x11, [x12, #PROBE_ENT_EVENT]
    ldr x11, [x3, #FREGS_LR]            // ftrace_regs_get_return_address: hooked, if fgraph ran first
    stp x1, x11, [x12, #PROBE_ENT_IP]   // ip, parent
    mrs x11, daif
    str x11, [x12, #PROBE_ENT_FLAGS]
    probe_entry_fields x3, x12
    add x15, x12, #PROBE_ENT_FETCH
    bl fetch_args
    str x9, [x12, #PROBE_ENT_FAULTS]
    mov x11, #REC_PROBE_ENTRY
    str x11, [x12, #PROBE_ENT_TYPE]     // committed
pe_done:
    mov x30, x17
    mov x0, #0
    ret

/* An f SYM%return event's entry: the first SAVED_ARGS (8) arguments, x0-x7, into its entry data,
 * for $argN at the exit. */
.globl probe_save_args
probe_save_args:
    ldp x9, x10, [x3, #FREGS_X0]
    stp x9, x10, [x4]
    ldp x9, x10, [x3, #FREGS_X2]
    stp x9, x10, [x4, #16]
    ldp x9, x10, [x3, #FREGS_X4]
    stp x9, x10, [x4, #32]
    ldp x9, x10, [x3, #FREGS_X6]
    stp x9, x10, [x4, #48]
    mov x0, #0
    ret

/* An f SYM%return event's exit: data = its program, ip = the function, ret_ip = where it returned,
 * entry_data = the arguments saved at entry. */
.globl probe_exit_event
probe_exit_event:
    mov x17, x30
    mov x16, x0
    bl rb_reserve
    cbz x12, px_done
    ldr x11, [x16, #PROG_EVENT]
    str x11, [x12, #PROBE_RET_EVENT]
    stp x1, x2, [x12, #PROBE_RET_IP]    // the function, where it returned
    mrs x11, daif
    str x11, [x12, #PROBE_RET_FLAGS]
    probe_exit_fields x3, x12
    ldp x9, x10, [x4]
    stp x9, x10, [x12, #PROBE_RET_ARG0]
    ldp x9, x10, [x4, #16]
    stp x9, x10, [x12, #PROBE_RET_ARG2]
    ldp x9, x10, [x4, #32]
    stp x9, x10, [x12, #PROBE_RET_ARG4]
    add x15, x12, #PROBE_RET_FETCH
    bl fetch_args
    str x9, [x12, #PROBE_RET_FAULTS]
    mov x11, #REC_PROBE_EXIT
    str x11, [x12, #PROBE_RET_TYPE]     // committed
px_done:
    mov x30, x17
    mov x0, #0
    ret

/* Run the program at x16: each STORE puts the value in the next word at x15. A load outside every
 * mapping (the region table: nr, then base and end pairs) faults its argument: its bit in the
 * result, and the steps up to its STORE skipped. The ops are tested most frequent first. In:
 * x3 = fregs, x4 = entry data. Out: x9 = the faulted arguments' bits. Clobbers x0-x2, x10, x11,
 * x13, x14, x16; keeps x12. */
.globl fetch_args
fetch_args:
    add x10, x16, #PROG_SIZE            // the first step
    mov x13, #0                         // the argument
    mov x9, #0                          // the faults
    mov x0, #0                          // the value
fa_step:
    ldp x11, x14, [x10], #STEP_SIZE     // op, operand
    cbz x11, fa_end                     // OP_END
    cmp x11, #OP_FREG
    b.eq fa_freg
    cmp x11, #OP_STORE
    b.eq fa_store
    cmp x11, #OP_DATA
    b.eq fa_data
    cmp x11, #OP_LOAD
    b.eq fa_load
    cmp x11, #OP_ADD
    b.eq fa_add
    cmp x11, #OP_IMM
    b.eq fa_imm
    cmp x11, #OP_STACKLOAD
    b.eq fa_stackload
    b fa_fault                          // OP_FAULT
fa_end:
    ret
fa_freg:
    ldr x0, [x3, x14]
    b fa_step
fa_data:
    ldr x0, [x4, x14]
    b fa_step
fa_imm:
    mov x0, x14
    b fa_step
fa_add:
    add x0, x0, x14
    b fa_step
fa_store:
    str x0, [x15, x13, lsl #3]
    add x13, x13, #1
    b fa_step
fa_stackload:                           // regs_get_kernel_stack_nth: 0 off the task's stack
    adr x2, pe_stack
    ldp x1, x2, [x2]
    cmp x0, x1
    b.lo fa_zero
    cmp x0, x2
    b.hi fa_zero
    ldr x0, [x0]
    b fa_step
fa_zero:
    mov x0, #0
    b fa_step
fa_load:                                // x14 bytes at x0, if one region holds them all
    ldr x1, pe_regions
    ldr x1, [x1]                        // the table
    ldr x2, [x1], #8
fa_region:
    cbz x2, fa_fault
    sub x2, x2, #1
    ldp x11, x16, [x1], #16             // a region's base and end
    cmp x0, x11
    b.lo fa_region
    sub x16, x16, x14
    cmp x0, x16
    b.hi fa_region
    cmp x14, #1
    b.eq fa_load1
    cmp x14, #2
    b.eq fa_load2
    cmp x14, #4
    b.eq fa_load4
    ldr x0, [x0]
    b fa_step
fa_load1:
    ldrb w0, [x0]
    b fa_step
fa_load2:
    ldrh w0, [x0]
    b fa_step
fa_load4:
    ldr w0, [x0]
    b fa_step
fa_fault:
    mov x11, #1
    lsl x11, x11, x13
    orr x9, x9, x11
fa_skip:
    ldr x11, [x10], #STEP_SIZE
    cmp x11, #OP_STORE
    b.ne fa_skip
    add x13, x13, #1
    b fa_step

.balign 8
pe_stack:                               // the task's stack: its base and its last whole word
    .quad STACK_BASE
    .quad STACK_LAST
pe_regions:                             // where the table of the machine's mappings is, set once
    .quad 0
