/*
 * ftrace_caller for x86_64, after arch/x86/kernel/ftrace_64.S (Intel syntax; offsets are the
 * kernel's ptrace-abi.h names, filled in from the lab's pt_regs table).
 *
 * Entered by `call ftrace_caller` at an enabled fentry site:
 *     [rsp]     = site + 5, the return into the traced function
 *     [rsp + 8] = parent ip, the traced function's own return address
 * or by `call ftrace_caller_mcount` at an enabled legacy -pg site, after the prologue:
 *     [rsp]     = site + 5, and rbp = the traced function's frame: 8(%rbp) is the parent ip
 * It builds a pt_regs-shaped struct ftrace_regs on the stack holding what ftrace_regs promises
 * (argument registers, rax, rbp, ip, sp), marks it partial with cs = 0, calls
 * ftrace_ops_list_func(ip, parent_ip, op, fregs), restores, and returns into the traced function.
 * Simplification: the kernel also pushes two fake frames under CONFIG_FRAME_POINTER; not here.
 */
.include "macros.S"

/* ftrace_caller, for the site kind \site: its call of the ops function, \call, is patched to a lone
 * ops's own function (ftrace_update_ftrace_func). */
.macro define_ftrace_caller name, call, site
.globl \name
\name:
    save_mcount_regs site=\site
    mov qword ptr [rsp+CS], 0           // "not a full pt_regs": ftrace_get_regs() gives NULL
    mov rdx, [rip+function_trace_op]    // op
    mov rcx, rsp                        // fregs
.globl \call
\call:
    call ftrace_ops_list_func
    mov rax, [rsp+RIP]                  // handlers may change the ip: return there
    mov [rsp+FRAME_SIZE], rax
    restore_mcount_regs
    ret
.endm

/*
 * ftrace_regs_caller: for ops with FTRACE_OPS_FL_SAVE_REGS (kprobes on ftrace, livepatch). The flags
 * are pushed first, before anything can change them; then the rest of pt_regs is filled (rbx,
 * r10-r15), with the pushed flags, the fixed kernel cs/ss and the site's sp, so ftrace_get_regs()
 * gives a complete pt_regs. Handlers may change flags and ip. As in the kernel, r11 is saved but
 * not restored. A direct trampoline sharing the site (register_ftrace_direct: a BPF trampoline)
 * is reached from here: call_direct_funcs() left its address in orig_ax
 * (arch_ftrace_set_direct_caller), which takes the flags' slot so that the final ret enters it
 * with the stack as the site's own call would have left it (ftrace_64.S, v6.17).
 */
.macro define_ftrace_regs_caller name, call, site
.globl \name
\name:
    pushfq
    save_mcount_regs 8, \site          // the pt_regs sits under the flags
    mov [rsp+R15], r15
    mov [rsp+R14], r14
    mov [rsp+R13], r13
    mov [rsp+R12], r12
    mov [rsp+R11], r11
    mov [rsp+R10], r10
    mov [rsp+RBX], rbx
    mov rcx, [rsp+FRAME_SIZE]           // the flags pushed first
    mov [rsp+EFLAGS], rcx
    mov qword ptr [rsp+SS], KERNEL_DS
    mov qword ptr [rsp+CS], KERNEL_CS   // a full pt_regs: ftrace_get_regs() gives it
    mov rdx, [rip+function_trace_op]    // op
    mov rcx, rsp                        // regs
.globl \call
\call:
    call ftrace_ops_list_func
    mov rax, [rsp+EFLAGS]               // handlers may change the flags and the ip
    mov [rsp+FRAME_SIZE], rax
    mov rax, [rsp+RIP]
    mov [rsp+FRAME_SIZE+8], rax
    mov r15, [rsp+R15]
    mov r14, [rsp+R14]
    mov r13, [rsp+R13]
    mov r12, [rsp+R12]
    mov r10, [rsp+R10]
    mov rbx, [rsp+RBX]
    mov rax, [rsp+ORIG_RAX]             // a direct trampoline, or 0
    mov [rsp+FRAME_SIZE-8], rax
    test rax, rax
    jnz \name\()_direct
    restore_mcount_regs
    popfq
    ret
\name\()_direct:                         // swap the flags with orig_rax
    mov rdi, [rsp+FRAME_SIZE]
    mov [rsp+FRAME_SIZE-8], rdi
    mov [rsp+FRAME_SIZE], rax
    restore_mcount_regs 8
    popfq
    call \name\()_rebalance           // the push;ret above unbalances the RSB: a pointless call
    int3
\name\()_rebalance:
    add rsp, 8
    ret
.endm

define_ftrace_caller ftrace_caller, ftrace_call, fentry
define_ftrace_regs_caller ftrace_regs_caller, ftrace_regs_call, fentry
/* The same for legacy -pg sites, as 5.1 built them without CC_USING_FENTRY (a kernel had one or
 * the other; the lab patches both kinds of object). */
define_ftrace_caller ftrace_caller_mcount, ftrace_call_mcount, mcount
define_ftrace_regs_caller ftrace_regs_caller_mcount, ftrace_regs_call_mcount, mcount

/* The ops dispatch, ftrace_ops_list_func(ip, parent_ip, op, fregs) (kernel/trace/ftrace.c). The
 * registered ftrace_ops run in the lab: this stub leaves its arguments in lab data, where the lab
 * reads them with one load, and jumps to ftrace_ops_list_lab, whose block carries the lab's hook;
 * then it returns. */
.globl ftrace_ops_list_func
ftrace_ops_list_func:
    mov rax, [rip+ops_list_args]
    mov [rax+OPS_LIST_ARGS_IP], rdi
    mov [rax+OPS_LIST_ARGS_PARENT_IP], rsi
    mov [rax+OPS_LIST_ARGS_OP], rdx
    mov [rax+OPS_LIST_ARGS_FREGS], rcx
    jmp ftrace_ops_list_lab
.globl ftrace_ops_list_lab
ftrace_ops_list_lab:
    ret

.balign 8
.globl function_trace_op
function_trace_op:                      // the ftrace_ops passed as `op`
    .quad 0
ops_list_args:                          // where ftrace_ops_list_func leaves its arguments
    .quad 0
