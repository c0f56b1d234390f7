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
 */
.globl ftrace_caller
ftrace_caller:
    hint #34                            // bti c
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
    ldr x2, function_trace_op           // op
    mov x3, sp                          // fregs
.globl ftrace_call
ftrace_call:
    bl ftrace_ops_list_func
    fregs_x0_x7 ldp
    ldr x8, [sp, #FREGS_X8]
    ldr x29, [sp, #FREGS_FP]
    ldr x30, [sp, #FREGS_LR]
    ldr x9, [sp, #FREGS_PC]
    add sp, sp, #FREGS_SIZE + 32
    ret x9

.include "mcount_caller.S"

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

.balign 8
.globl function_trace_op
function_trace_op:                      // the ftrace_ops passed as `op`
    .quad 0
ops_list_args:                          // where ftrace_ops_list_func leaves its arguments
    .quad 0
