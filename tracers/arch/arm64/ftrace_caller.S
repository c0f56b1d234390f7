.include "macros.S"
/*
 * ftrace_caller for arm64 with DYNAMIC_FTRACE_WITH_ARGS, after arch/arm64/kernel/entry-ftrace.S.
 * Offsets are the kernel's asm-offsets names, filled in from the lab's ftrace_regs table.
 *
 * Entered by `BL ftrace_caller` at an enabled site, after the site's `MOV X9, LR`:
 *     x9  = the callsite's lr (the traced function's return address)
 *     x30 = the instruction after the BL
 *     x0-x8 are live arguments; x9-x17 are free to clobber.
 * It fills the 112-byte struct ftrace_regs (x0-x8, fp, lr, sp, pc: never PSTATE, which cannot be
 * read outside an exception), links two frame records for unwinders, calls
 * ftrace_ops_list_func(ip, parent_ip, op, fregs), and returns with lr and pc taken from fregs,
 * so handlers may change both (fgraph hooks lr; livepatch changes pc).
 *
 * Two builds of it, as the kernel's #ifdefs make them: \ops names how it finds the ftrace_ops.
 * function_trace_op (before 6.3, or a kernel without CALL_OPS): one global op and a patchable
 * call, ftrace_call. call_ops (DYNAMIC_FTRACE_WITH_CALL_OPS 6.3, baaf553d3bc3, with
 * DYNAMIC_FTRACE_WITH_DIRECT_CALLS 6.4, 2aa6ac03516d): the site's own ops from the 8-byte literal
 * before its function, a direct trampoline in its direct_call taken at once, and one that
 * call_direct_funcs() left in fregs->direct_tramp taken after the other ops ran.
 */
.macro define_ftrace_caller name, call, ops
.globl \name
\name:
    hint #34                            // bti c
    \ops\()_entry \name
    mov x10, sp                         // the traced function's sp
    sub sp, sp, #FREGS_SIZE + 32        // ftrace_regs and two frame records
    fregs_x0_x7 stp
    str x8, [sp, #FREGS_X8]
    str xzr, [sp, #FREGS_DIRECT_TRAMP]
    str x29, [sp, #FREGS_FP]
    str x9, [sp, #FREGS_LR]
    str x10, [sp, #FREGS_SP]
    str x30, [sp, #FREGS_PC]
    stp x29, x9, [sp, #FREGS_SIZE + 16] // a frame record for the callsite
    add x29, sp, #FREGS_SIZE + 16
    stp x29, x30, [sp, #FREGS_SIZE]     // and our own
    add x29, sp, #FREGS_SIZE
    sub x0, x30, #AARCH64_INSN_SIZE     // ip = the BL
    mov x1, x9                          // parent_ip = the callsite's lr
    \ops\()_call \call
    fregs_x0_x7 ldp
    ldr x8, [sp, #FREGS_X8]
    ldr x29, [sp, #FREGS_FP]
    \ops\()_late \name
    ldr x30, [sp, #FREGS_LR]
    ldr x9, [sp, #FREGS_PC]
    add sp, sp, #FREGS_SIZE + 32
    ret x9
    \ops\()_direct \name
.endm

.macro function_trace_op_entry name
.endm

.macro function_trace_op_call call
    ldr x2, function_trace_op           // op
    mov x3, sp                          // fregs
.globl \call
\call:
    bl ftrace_ops_list_func
.endm

.macro function_trace_op_late name
.endm

.macro function_trace_op_direct name
.endm

/* The literal is 8-byte aligned, 12 or 16 bytes before the BL (ftrace_call_adjust): aligning lr
 * down to 8 and stepping back 16 finds it either way. */
.macro call_ops_entry name
    and x11, x30, #0xfffffffffffffff8    // bic x11, x30, #7
    ldur x11, [x11, #-16]               // op: -(4 * AARCH64_INSN_SIZE)
    ldr x17, [x11, #FTRACE_OPS_DIRECT_CALL]     // op->direct_call
    cbnz x17, \name\()_direct
.endm

.macro call_ops_call call
    mov x3, sp                          // fregs
    mov x2, x11                         // op
    ldr x4, [x2, #FTRACE_OPS_FUNC]      // op->func
    blr x4
.endm

.macro call_ops_late name
    ldr x17, [sp, #FREGS_DIRECT_TRAMP]
    cbnz x17, \name\()_direct_late
.endm

/* ftrace_caller_direct_late: the other ops ran and x0-x8 and fp are restored; lr and pc as the
 * trampoline expects them (x9 = the callsite's lr, x30 = after the BL), sp as at the site; then
 * ftrace_caller_direct: `br x17`, which may land on a BTI C and unbalances no return stack. */
.macro call_ops_direct name
\name\()_direct_late:
    ldr x9, [sp, #FREGS_LR]
    ldr x30, [sp, #FREGS_PC]
    add sp, sp, #FREGS_SIZE + 32
\name\()_direct:
    br x17
.endm

define_ftrace_caller ftrace_caller, ftrace_call, function_trace_op
/* The same for sites with a CALL_OPS literal (-fpatchable-function-entry=4,2): in the kernel one
 * build or the other is ftrace_caller; the lab patches both kinds of object. */
define_ftrace_caller ftrace_caller_ops, none, call_ops

/*
 * ftrace_caller_mcount for arm64's legacy -pg sites, after the !DYNAMIC_FTRACE_WITH_REGS half of
 * arch/arm64/kernel/entry-ftrace.S as 6.1 had it (blob 45aaee55afff; AKASHI Takahiro's 2014 code:
 * mcount_enter, mcount_get_pc0, mcount_get_lr, ftrace_graph_caller's mcount_get_lr_addr and
 * mcount_get_parent_fp); 6.6's asm/ftrace.h still defined MCOUNT_ADDR for it. The modelled 7.0
 * builds only patchable entries (DYNAMIC_FTRACE_WITH_ARGS). The lab runs that 6.1 site and frame
 * recovery, but dispatches into 7.0's ftrace_regs ops list as ftrace_caller does (the kernel's
 * called the tracer with (pc, lr) only, and fgraph through a separate ftrace_graph_caller).
 *
 * Entered by `BL ftrace_caller_mcount` at an enabled site, after the prologue built the traced
 * function's frame record at x29 = {the parent's fp, lr}:
 *     x30 = the instruction after the BL
 *     x0  = gcc's MOV X0, X30 copy of lr (argument 1 is gone); clang leaves argument 1 there
 * To the compiler this is an ordinary call: x0-x18 may be clobbered, so nothing of them is
 * restored. As the kernel's: pc = lr - 4 (mcount_get_pc0), the parent's pc = [x29 + 8]
 * (mcount_get_lr) and the parent's fp = [x29] (mcount_get_parent_fp). Its ftrace_regs has what
 * ftrace_regs users look for at an entry: fp and lr are the function's at entry, read from that
 * frame record; sp is the site's (the entry sp is unknown: the frame size is the compiler's).
 * x0 is stored as the site had it, for the accessors, but is not among what this kind captures.
 * On the way out the lr in fregs goes back into the frame record, so that fgraph's hook (the
 * kernel's prepare_ftrace_return(pc, &lr, fp), mcount_get_lr_addr) is what the function's
 * epilogue loads; and it returns to fregs->pc.
 */
.globl ftrace_caller_mcount
ftrace_caller_mcount:
    hint #34                            // bti c
    sub sp, sp, #FREGS_SIZE + 16        // ftrace_regs and our frame record (mcount_enter)
    fregs_x0_x7 stp                     // x0 as the site left it: what ftrace_regs_get_argument(0)
    str x8, [sp, #FREGS_X8]             // reads, but not argument 1 after gcc's MOV X0, X30
    str xzr, [sp, #FREGS_DIRECT_TRAMP]
    ldr x10, [x29]                      // the parent's fp
    str x10, [sp, #FREGS_FP]
    ldr x1, [x29, #8]                   // parent_ip = the lr in the frame record
    str x1, [sp, #FREGS_LR]
    add x10, sp, #FREGS_SIZE + 16
    str x10, [sp, #FREGS_SP]            // the site's sp
    str x30, [sp, #FREGS_PC]
    stp x29, x30, [sp, #FREGS_SIZE]
    add x29, sp, #FREGS_SIZE
    sub x0, x30, #AARCH64_INSN_SIZE     // ip = the BL
    ldr x2, function_trace_op           // op
    mov x3, sp                          // fregs
.globl ftrace_call_mcount
ftrace_call_mcount:
    bl ftrace_ops_list_func
    ldr x29, [sp, #FREGS_SIZE]          // the traced function's fp
    ldr x10, [sp, #FREGS_LR]
    str x10, [x29, #8]                  // fgraph may have hooked it
    ldr x9, [sp, #FREGS_PC]
    add sp, sp, #FREGS_SIZE + 16
    ret x9

/* The ops dispatch, ftrace_ops_list_func(ip, parent_ip, op, fregs) (kernel/trace/ftrace.c). The
 * registered ftrace_ops run in the lab: this stub leaves its arguments in lab data, where the lab
 * reads them with one load, and branches to ftrace_ops_list_lab, whose block carries the lab's
 * hook; then it returns. */
.globl ftrace_ops_list_func
ftrace_ops_list_func:
    ldr x9, ops_list_args
    stp x0, x1, [x9, #OPS_LIST_ARGS_IP]         // ip, parent_ip
    stp x2, x3, [x9, #OPS_LIST_ARGS_OP]         // op, fregs
    b ftrace_ops_list_lab
.globl ftrace_ops_list_lab
ftrace_ops_list_lab:
    ret

.globl ftrace_stub
ftrace_stub:                            // ftrace_nop_ops' func: a disabled site's literal
    ret

.balign 8
.globl function_trace_op
function_trace_op:                      // the ftrace_ops passed as `op`
    .quad 0
ops_list_args:                          // where ftrace_ops_list_func leaves its arguments
    .quad 0
