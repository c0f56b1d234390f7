/*
 * ftrace_ops_list_func in guest code, for when every registered ftrace_ops has guest code: what
 * ftrace_call (and ftrace_list_ops' func, at CALL_OPS sites) calls with several ops, instead of the
 * stub that enters the lab's Python dispatch. In: x0 = ip, x1 = parent_ip, x2 = op
 * (ftrace_list_ops), x3 = fregs, as ftrace_caller passes them. The lab precomputes, per enabled
 * site, the zero-terminated list of (func, op) pairs of the ops tracing it, newest first, as
 * __ftrace_ops_list_func (kernel/trace/ftrace.c) walks ftrace_ops_list and tests each ops's filter
 * and notrace hashes (ftrace_ops_test); this finds the site's list in an open-addressed table keyed
 * by hash_64(ip, bits) (include/linux/hash.h, the kernel's ftrace_hash_key), probing linearly, and
 * calls each func(ip, parent_ip, op, fregs), the last one as a compiler's tail call (a branch, its
 * frame gone).
 * No TRACE_LIST_START trylock around the calls, as __ftrace_ops_list_func takes: guest funcs run no
 * traced code, so it would always be taken and given back.
 * Each func is called as C code: the arguments are reloaded before each call from x19-x22, which it
 * keeps, and which this keeps for ftrace_caller (it restores only what it saved).
 */

.include "macros.S"
.globl ftrace_ops_guest_list_func
ftrace_ops_guest_list_func:
    ldr x9, ops_hash                    // the table's header
    ip_table_find ftrace_ops_list_missing, ops_list_probe
    ldr x10, [x9, #OPS_PAIR_SIZE]       // the next pair's func: 0 after the last
    cbz x10, ops_list_last              // one pair
    stp x29, x30, [sp, #-48]!
    mov x29, sp
    stp x19, x20, [sp, #16]
    stp x21, x22, [sp, #32]
    mov x19, x0
    mov x20, x1
    mov x21, x3
    mov x22, x9                         // the site's (func, op) pairs: at least two
ops_list_call:
    mov x0, x19
    mov x1, x20
    ldr x2, [x22, #OPS_PAIR_OP]         // the ops's own struct ftrace_ops
    mov x3, x21
    ldr x9, [x22, #OPS_PAIR_FUNC]
    blr x9
    add x22, x22, #OPS_PAIR_SIZE
    ldr x10, [x22, #OPS_PAIR_SIZE]
    cbnz x10, ops_list_call
    mov x9, x22                         // the last pair
    mov x0, x19
    mov x1, x20
    mov x3, x21
    ldp x21, x22, [sp, #32]
    ldp x19, x20, [sp, #16]
    ldp x29, x30, [sp], #48
ops_list_last:
    ldr x2, [x9, #OPS_PAIR_OP]
    ldr x16, [x9, #OPS_PAIR_FUNC]
    br x16                              // x16: a BTI `c` landing pad accepts it

.globl ftrace_ops_list_missing
ftrace_ops_list_missing:
    ret

.balign 8
ops_hash:                               // the table's header (IP_TABLE)
    .quad 0
