/*
 * fprobe's dispatch for arm64 in guest code (kernel/trace/fprobe.c, v6.19), for fprobes whose
 * handlers are guest code: fprobe_fgraph_entry and fprobe_return as fgraph's lone user, and
 * fprobe_ftrace_entry as fprobe_ftrace_ops' function. The tables are tracers/core/fprobe_guest.py's;
 * the shadow-stack words are fgraph.py's, pushed as its Python path pushes them.
 * Handlers are called as handler(data x0, ip x1, ret_ip x2, fregs x3, entry_data x4) and may
 * clobber x0-x17. Each function here keeps the callee-saved registers only, as C code does (the
 * callers, ftrace_caller and return_to_handler, restore x0-x7 themselves).
 */

.include "macros.S"

/* The header of the exit of the guest fprobe at x9, if it has one, at \at, which moves past it
 * and its data: id | words << 60. Clobbers x10, x11. */
.macro fpe_exit_header at
    ldr x10, [x9, #GFP_EXIT]
    cbz x10, fpe_exit_header_none_\at
    ldr x10, [x9, #GFP_WORDS]
    ldr x11, [x9, #GFP_ID]
    orr x11, x11, x10, lsl #60
    str x11, [\at]
    add \at, \at, x10, lsl #3
    add \at, \at, #8
fpe_exit_header_none_\at:
.endm

/* The frame fprobe_fgraph_entry and fprobe_return keep: the callee-saved registers they use. */
.macro fprobe_frame_push
    stp x29, x30, [sp, #-80]!
    mov x29, sp
    stp x19, x21, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    str x27, [sp, #64]
.endm

.macro fprobe_frame_pop
    ldr x27, [sp, #64]
    ldp x25, x26, [sp, #48]
    ldp x23, x24, [sp, #32]
    ldp x19, x21, [sp, #16]
    ldp x29, x30, [sp], #80
.endm

/* fprobe_fgraph_entry: what function_graph_enter_regs and fprobe_fgraph_entry do together for the
 * lone user, in their order. No room for a frame: trace_overrun. Else the frame and its reserved
 * word are pushed; no room for the exits' data (more than FGRAPH_MAX_DATA_SIZE, or past
 * SHADOW_STACK_MAX_OFFSET): each fprobe misses, no handler runs. Else the data and its header are
 * reserved, each entry handler runs, and each exit not skipped gets a header (id | words << 60)
 * and its data, packed; if any exit will run, the reserved word becomes the bitmap and the return
 * is hooked (fregs->lr), else the frame is popped. In: x0 = ip, x1 = parent_ip, x2 = op,
 * x3 = fregs. Where no fprobe on ip has an entry handler it calls nothing and needs no frame.
 * Below, x1 = fgraph's task state, x2 = the frame's index, x4 = the fprobes on ip, x5 = where the
 * next exit's header goes (ftrace_caller restores x0-x8). */
.globl fprobe_fgraph_entry
fprobe_fgraph_entry:
    ldr x9, fp_control
    ldr x1, [x9, #FPC_FGRAPH]           // fgraph's task state
    ldr x2, [x1, #FG_CURR]              // where the frame goes
    add x10, x2, #FG_FRAME_WORDS+1
    cmp x10, #FG_MAX_OFFSET
    b.hs fpe_overrun
    ldr x9, [x9, #FPC_GRAPH_IPS]
    ip_table_find fpe_out, fpe_find     // keeps x0-x8
    mov x4, x9                          // the fprobes on ip
    ldr x10, [x1, #FG_STACK]
    add x9, x10, x2, lsl #3             // the frame
    ldr x11, [x3, #FREGS_LR]
    stp x11, x0, [x9, #FG_FRAME_RET]    // ret, func
    ldr x11, [x3, #FREGS_FP]
    stp x11, x11, [x9, #FG_FRAME_FP]    // fp, and retp (arm64 matches frames by fp)
    mov x11, #FG_FRAME_WORDS            // reserved, its offset to the frame
    str x11, [x9, #FG_PUSH_BITMAP]
    add x5, x9, #FG_PUSH_BITMAP+8       // the exits' data: above the frame and that word
    add x11, x2, #FG_FRAME_WORDS+1
    str x11, [x1, #FG_CURR]
    ldr x11, [x1, #FG_DEPTH]
    add x11, x11, #1
    str x11, [x1, #FG_DEPTH]
    ldr x9, [x4, #FPROBE_AT_NEED]
    cbz x9, fpe_reserved
    cmp x9, #FGRAPH_MAX_DATA_SIZE
    b.hi fpe_missed                     // fgraph_reserve_data refuses it
    add x10, x2, x9, lsr #3
    add x10, x10, #FG_FRAME_WORDS+2
    cmp x10, #FG_MAX_OFFSET
    b.hs fpe_missed                     // no room for it
    str x10, [x1, #FG_CURR]             // reserved: the data, then its header
    ldr x11, [x4, #FPROBE_AT_HEADER]
    str x11, [x5, x9]
fpe_reserved:
    ldr x9, [x4, #FPROBE_AT_ENTRIES]
    cbnz x9, fpe_entries
    mov x6, #0                          // no entry handler to call: each exit's header
fpe_header:
    add x9, x4, #FPROBE_AT_SIZE
    ldr x9, [x9, x6, lsl #3]
    fpe_exit_header x5
    add x6, x6, #1
    ldr x9, [x4, #FPROBE_AT_NR]
    cmp x6, x9
    b.lo fpe_header
fpe_done:
    ldr x10, [x1, #FG_STACK]
    add x9, x2, #FG_FRAME_WORDS+1
    add x9, x10, x9, lsl #3             // the data
    cmp x5, x9
    b.eq fpe_pop                        // no exit to run: the frame goes again
    ldr x11, fp_control
    ldr x11, [x11, #FPC_BITMAP]
    stur x11, [x9, #-8]                 // the reserved word becomes the bitmap
    ldr x11, [x1, #FG_RETURN_TO_HANDLER]
    str x11, [x3, #FREGS_LR]            // hook the return: lr in fregs
fpe_out:
    ret
fpe_missed:
    mov x6, #0
fpe_miss_next:
    add x9, x4, #FPROBE_AT_SIZE
    ldr x9, [x9, x6, lsl #3]
    ldr x10, [x9, #GFP_NMISSED]
    add x10, x10, #1
    str x10, [x9, #GFP_NMISSED]
    add x6, x6, #1
    ldr x9, [x4, #FPROBE_AT_NR]
    cmp x6, x9
    b.lo fpe_miss_next
fpe_pop:
    str x2, [x1, #FG_CURR]
    ldr x11, [x1, #FG_DEPTH]
    sub x11, x11, #1
    str x11, [x1, #FG_DEPTH]
    ret
fpe_overrun:
    ldr x10, [x1, #FG_OVERRUN]
    add x10, x10, #1
    str x10, [x1, #FG_OVERRUN]
    ret

/* Each fprobe's entry handler, then its exit's header unless the handler returned non-zero; in a
 * frame, as handlers may clobber every caller-saved register. Then fprobe_fgraph_entry's
 * memset(fgraph_data + used, 0, reserved_words - used) of what a skipped exit left unused: it takes
 * a count of words as bytes, clearing that many bytes. Back to fpe_done with its registers. */
fpe_entries:
    fprobe_frame_push
    mov x19, x0                         // ip
    mov x21, x3                         // fregs
    mov x23, x1
    mov x24, x2
    mov x25, x4
    mov x26, x5
    mov x27, #0
fpe_next:
    add x9, x25, #FPROBE_AT_SIZE
    ldr x9, [x9, x27, lsl #3]           // the guest fprobe
    ldr x10, [x9, #GFP_ENTRY]
    cbz x10, fpe_exit
    ldr x11, [x9, #GFP_EXIT]
    ldr x13, [x9, #GFP_WORDS]
    cmp x13, #0
    ccmp x11, #0, #4, ne                // Z: no exit, or no data
    add x4, x26, #8                     // entry_data: for an exit with data, after its header
    csel x4, xzr, x4, eq
    ldr x0, [x9, #GFP_ENTRY_DATA]
    mov x1, x19
    ldr x2, [x21, #FREGS_LR]            // ret_ip: ftrace_regs_get_return_address
    mov x3, x21
    blr x10
    cbnz x0, fpe_skip                   // non-zero: skip the exit (not counted as missed)
    add x9, x25, #FPROBE_AT_SIZE
    ldr x9, [x9, x27, lsl #3]
fpe_exit:
    fpe_exit_header x26
fpe_skip:
    add x27, x27, #1
    ldr x9, [x25, #FPROBE_AT_NR]
    cmp x27, x9
    b.lo fpe_next
    ldr x10, [x23, #FG_STACK]
    add x9, x24, #FG_FRAME_WORDS+1
    add x9, x10, x9, lsl #3             // the data
    ldr x11, [x25, #FPROBE_AT_NEED]
    add x11, x11, x9
    sub x11, x11, x26
    lsr x11, x11, #3
    cbz x11, fpe_cleared
fpe_clear:
    sub x11, x11, #1
    strb wzr, [x26, x11]
    cbnz x11, fpe_clear
fpe_cleared:
    mov x1, x23
    mov x2, x24
    mov x3, x21
    mov x4, x25
    mov x5, x26
    fprobe_frame_pop
    b fpe_done

/* fprobe_return: what ftrace_return_to_handler and fprobe_return do together for the lone user:
 * pop the frame, check the frame pointer (HAVE_FUNCTION_GRAPH_FP_TEST), put the real return
 * address in fregs->pc, and call the exit handler of each header stored at entry whose fprobe is
 * still registered. In: x0 = the exit fregs. */
.globl fprobe_return
fprobe_return:
    fprobe_frame_push
    mov x19, x0                         // fregs
    ldr x9, fp_control
    ldr x23, [x9, #FPC_FGRAPH]
    ldr x9, [x23, #FG_CURR]
    cbz x9, fprobe_empty                // no frame to pop
    ldr x10, [x23, #FG_STACK]
    sub x11, x9, #1
    ldr x12, [x10, x11, lsl #3]         // the top word: the data's header
    and x13, x12, #FGRAPH_FRAME_OFFSET_MASK
    sub x24, x11, x13                   // the frame's index
    add x21, x10, x24, lsl #3           // the frame
    ldr x13, [x21, #FG_FRAME_FP]        // the fp it was entered with
    ldr x14, [x19, #FREGS_FP]
    cmp x13, x14
    b.ne fprobe_bad_fp
    ldr x13, [x21, #FG_FRAME_RET]
    str x13, [x19, #FREGS_PC]           // where to return
    lsr x12, x12, #FGRAPH_DATA_SHIFT
    and x12, x12, #FGRAPH_DATA_MASK
    add x12, x12, #1                    // the data's words
    sub x11, x11, x12
    add x25, x10, x11, lsl #3           // the data
    add x26, x25, x12, lsl #3           // its end
    ldr x27, fp_control
    ldr x27, [x27, #FPC_IDS]
fpr_next:
    cmp x25, x26
    b.hs fpr_pop
    ldr x9, [x25]
    and x10, x9, #0x0fffffffffffffff    // the fprobe's id
    cbz x10, fpr_pop                    // a cleared header: no more exits
    ldr x9, [x27, x10, lsl #3]          // its guest fprobe (0: unregistered since)
    cbz x9, fpr_skip
    ldr x0, [x9, #GFP_EXIT_DATA]
    ldp x2, x1, [x21, #FG_FRAME_RET]    // ret, func
    mov x3, x19
    ldr x10, [x9, #GFP_WORDS]
    cmp x10, #0
    add x4, x25, #8
    csel x4, xzr, x4, eq                // its entry data, if it has any
    ldr x9, [x9, #GFP_EXIT]
    blr x9
fpr_skip:
    ldr x9, [x25]
    lsr x9, x9, #60
    add x25, x25, x9, lsl #3
    add x25, x25, #8
    b fpr_next
fpr_pop:
    str x24, [x23, #FG_CURR]
    ldr x9, [x23, #FG_DEPTH]
    sub x9, x9, #1
    str x9, [x23, #FG_DEPTH]
    fprobe_frame_pop
    ret

/* fprobe_ftrace_entry (6.19+): each entry-only fprobe on ip, called with parent_ip as ret_ip and
 * no entry data; a lone fprobe's handler is branched to, as a compiler's tail call (through x16,
 * which a BTI `c` landing pad accepts). In: x0 = ip, x1 = parent_ip, x2 = op, x3 = fregs. */
.globl fprobe_ftrace_entry
fprobe_ftrace_entry:
    ldr x9, fp_control
    ldr x9, [x9, #FPC_FTRACE_IPS]
    ip_table_find ffe_ret, ffe_find     // keeps x0-x8
    ldr x10, [x9, #FPROBE_AT_NR]
    cmp x10, #1
    b.ne ffe_several
    ldr x10, [x9, #FPROBE_AT_SIZE]      // the one fprobe: its handler in this function's place
    mov x2, x1
    mov x1, x0
    ldr x0, [x10, #GFP_ENTRY_DATA]
    mov x4, #0
    ldr x16, [x10, #GFP_ENTRY]
    br x16
ffe_ret:
    ret
ffe_several:
    stp x29, x30, [sp, #-64]!
    mov x29, sp
    stp x19, x20, [sp, #16]
    stp x21, x22, [sp, #32]
    str x23, [sp, #48]
    mov x19, x0
    mov x20, x1
    mov x21, x3
    add x22, x9, #FPROBE_AT_SIZE        // its fprobes, then the end of the list
    add x23, x22, x10, lsl #3
ffe_next:
    ldr x9, [x22], #8
    ldr x0, [x9, #GFP_ENTRY_DATA]
    mov x1, x19
    mov x2, x20
    mov x3, x21
    mov x4, #0
    ldr x9, [x9, #GFP_ENTRY]
    blr x9
    cmp x22, x23
    b.lo ffe_next
    ldr x23, [sp, #48]
    ldp x21, x22, [sp, #32]
    ldp x19, x20, [sp, #16]
    ldp x29, x30, [sp], #64
    ret

/* An fprobe's Python handler (the data is the fprobe's id): its arguments into the mailbox, then
 * the block carrying the lab's hook, which calls it; x0 = what it returned (an entry handler's
 * non-zero skips the exit). Clobbers x9, x10. */
.macro python_handler name
.globl \name
\name:
    ldr x9, \name\()_args
    stp x0, x1, [x9, #PY_ARGS_ID]       // id, ip
    stp x2, x3, [x9, #PY_ARGS_RET_IP]   // ret_ip, fregs
    str x4, [x9, #PY_ARGS_DATA]
    mov x10, x30
    bl \name\()_lab
    mov x30, x10
    ldr x0, [x9, #PY_ARGS_RESULT]
    ret
.globl \name\()_lab
\name\()_lab:
    ret
.balign 8
\name\()_args:
    .quad 0
.endm

python_handler fprobe_python_entry
python_handler fprobe_python_exit

/* A frame-pointer mismatch, and no frame to pop: each one instruction carries a lab hook that
 * stops with fgraph's error. */
.globl fprobe_bad_fp
fprobe_bad_fp:
    ret

.globl fprobe_empty
fprobe_empty:
    ret

.balign 8
fp_control:                             // the guest dispatch's tables, set once
    .quad 0
