/*
 * ftrace_ops_list_func in guest code, for when every registered ftrace_ops has guest code: what
 * ftrace_call calls with several ops, instead of the stub that enters the lab's Python dispatch.
 * In: rdi = ip, rsi = parent_ip, rdx = op (ftrace_list_ops), rcx = fregs, as ftrace_caller passes
 * them. The lab precomputes, per enabled site, the zero-terminated list of (func, op) pairs of the
 * ops tracing it, newest first, as __ftrace_ops_list_func (kernel/trace/ftrace.c) walks
 * ftrace_ops_list and tests each ops's filter and notrace hashes (ftrace_ops_test); this finds the
 * site's list in an open-addressed table keyed by hash_64(ip, bits) (include/linux/hash.h, the
 * kernel's ftrace_hash_key), probing linearly, and calls each func(ip, parent_ip, op, fregs), the
 * last one as a compiler's tail call (a jump, its frame gone).
 * No TRACE_LIST_START trylock around the calls, as __ftrace_ops_list_func takes: guest funcs run no
 * traced code, so it would always be taken and given back.
 * Each func is called as C code: the arguments are reloaded before each call from rbx, r12-r14,
 * which it keeps, and which this keeps for ftrace_caller (it restores only what it saved).
 */

.include "macros.S"
.globl ftrace_ops_guest_list_func
ftrace_ops_guest_list_func:
    mov rax, [rip+ops_hash]             // the table's header
    ip_table_find ftrace_ops_list_missing, ops_list_probe
    cmp qword ptr [rax+OPS_PAIR_SIZE+OPS_PAIR_FUNC], 0
    je ops_list_last                    // one pair
    push rbx
    push r12
    push r13
    push r14
    sub rsp, 8                          // sp as a C call expects it
    mov rbx, rax                        // the site's (func, op) pairs: at least two
    mov r12, rdi
    mov r13, rsi
    mov r14, rcx
ops_list_call:
    mov rdi, r12
    mov rsi, r13
    mov rdx, [rbx+OPS_PAIR_OP]          // the ops's own struct ftrace_ops
    mov rcx, r14
    call qword ptr [rbx+OPS_PAIR_FUNC]
    add rbx, OPS_PAIR_SIZE
    cmp qword ptr [rbx+OPS_PAIR_SIZE+OPS_PAIR_FUNC], 0
    jne ops_list_call
    mov rax, rbx                        // the last pair
    mov rdi, r12
    mov rsi, r13
    mov rcx, r14
    add rsp, 8
    pop r14
    pop r13
    pop r12
    pop rbx
ops_list_last:
    mov rdx, [rax+OPS_PAIR_OP]
    jmp qword ptr [rax+OPS_PAIR_FUNC]

/* A site the table does not hold: the lab's hook stops with an error (ip in rdi). */
.globl ftrace_ops_list_missing
ftrace_ops_list_missing:
    ret

.balign 8
ops_hash:                               // the table's header (IP_TABLE)
    .quad 0
