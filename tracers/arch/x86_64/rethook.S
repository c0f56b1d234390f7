/*
 * rethook and kretprobes for x86_64 in guest code, for the nodes whose pool's handler is guest code
 * (probe events' kretprobe_dispatcher: probe_events.S). The pools, the nodes and the task's list
 * are tracers/core/rethook.py's (RETHOOK, RETHOOK_NODE, RETHOOK_TASK), which Python reads and
 * writes too; a guest kretprobe is tracers/core/kretprobe.py's GUEST_KRETPROBE.
 */

.include "macros.S"

/* The node at \node first on the list whose first node's address is the word at [\head] (the
 * task's hooked nodes, a pool's free ones), through \tmp. */
.macro node_push head, node, tmp
    mov \tmp, [\head]
    mov [\node+RHN_NEXT], \tmp
    mov [\head], \node
.endm

/* pre_handler_kretprobe (kernel/kprobes.c, v6.18, KRETPROBE_ON_RETHOOK), the pre_handler of a
 * kretprobe's kprobe, which the guest kprobe_ftrace_handler (kprobe_ftrace.S) calls as
 * pre(rp rdi, ip rsi, 0 rdx, regs rcx): rethook_try_get(rp->rh) (objpool_pop: the free list's
 * first), or rp->nmissed++ when the pool is empty; then the entry handler, if any, called as
 * entry(data rdi, ip rsi, 0 rdx, regs rcx, the node's data r8), whose non-zero return recycles the
 * node (rethook_recycle); else rethook_hook(): arch_rethook_prepare (arch/x86/kernel/rethook.c:
 * the node keeps the word at regs->sp and its address as the frame, and the word becomes the
 * trampoline) and __llist_add on current->rethooks. The lab's node keeps ip as its func, and its
 * kretprobe counts nhit when it takes a node, as kretprobe.py's Python _entry does.
 * Returns rax = 0; clobbers rdx, r8-r10 (and what the entry handler clobbers). */
.globl pre_handler_kretprobe
pre_handler_kretprobe:
    mov rax, [rdi+GKRP_RETHOOK]
    mov r8, [rax+RH_FREE]
    test r8, r8
    jz pkr_missed
    mov r9, [r8+RHN_NEXT]
    mov [rax+RH_FREE], r9
    add qword ptr [rdi+GKRP_NHIT], 1
    mov r9, [rdi+GKRP_ENTRY]
    test r9, r9
    jz pkr_hook
    push r8
    push rdi
    push rsi
    push rcx
    mov rdi, [rdi+GKRP_ENTRY_DATA]
    xor edx, edx
    mov r8, [r8+RHN_DATA]
    call r9
    pop rcx
    pop rsi
    pop rdi
    pop r8
    test rax, rax
    jnz pkr_recycle
pkr_hook:
    mov rdx, [rcx+RSP]                  // the return slot
    mov r9, [rdx]
    mov [r8+RHN_RET_ADDR], r9
    mov [r8+RHN_FRAME], rdx
    mov [r8+RHN_FUNC], rsi
    mov r9, RETHOOK_TRAMPOLINE
    mov [rdx], r9                       // the return goes to the trampoline
    mov r9, [rip+rh_task]
    node_push r9+RHT_FIRST, r8, r10     // __llist_add on current->rethooks
    xor eax, eax
    ret
pkr_recycle:
    mov rax, [rdi+GKRP_RETHOOK]
    node_push rax+RH_FREE, r8, r9       // rethook_recycle
    xor eax, eax
    ret
pkr_missed:
    add qword ptr [rdi+GKRP_NMISSED], 1
    xor eax, eax
    ret

/* rethook_guest_callback(regs): arch_rethook_trampoline_callback and rethook_trampoline_handler
 * (arch/x86/kernel/rethook.c, kernel/trace/rethook.c, v6.18) for a return whose nodes all have
 * guest handlers; returns rax = 0. Else (verify mode holds the trampoline, no hooked node, a node
 * of another frame or whose handler is Python) rax = 1 and nothing has changed: the trampoline's
 * stub hands the return to Python (rethook.py's _handler), which reports what is wrong.
 * __rethook_find_ret_addr: the frame's nodes run from the list's first to the first one whose
 * ret_addr is not the trampoline (the correct return address). Then the fix-ups (cs, orig_ax = -1,
 * sp += 16: the trampoline pushed sp - 16), regs->ip = the correct address, each node's handler
 * from the first, called as handler(data rdi, func rsi, ret_ip rdx, regs rcx, the node's data
 * r8), the list left linked while they run (unwinders decode it); arch_rethook_fixup_return (the
 * correct address into the fake return slot above regs: the frame), the nodes unlinked and
 * recycled, and flags copied into the ss slot for the trampoline's popfq.
 * In: rdi = regs. As a C function: keeps rbx, rbp, r12-r15, and rdi when it declines. */
.globl rethook_guest_callback
rethook_guest_callback:
    mov rax, [rip+rh_task]
    cmp qword ptr [rax+RHT_VERIFY], 0
    jne rgc_python
    lea r8, [rdi+FRAME_SIZE]            // the frame
    mov r9, RETHOOK_TRAMPOLINE
    mov rdx, [rax+RHT_FIRST]
rgc_find:
    test rdx, rdx
    jz rgc_python
    cmp [rdx+RHN_FRAME], r8
    jne rgc_python
    mov r10, [rdx+RHN_RETHOOK]
    cmp qword ptr [r10+RH_HANDLER], 0
    je rgc_python
    mov r10, [rdx+RHN_RET_ADDR]
    cmp r10, r9
    jne rgc_found
    mov rdx, [rdx+RHN_NEXT]
    jmp rgc_find
rgc_python:
    mov eax, 1
    ret
rgc_found:
    push rbx
    push r12
    push r13
    push r14
    mov rbx, rdi                        // regs
    mov r12, rdx                        // the frame's last node
    mov r13, r10                        // the correct return address
    mov qword ptr [rbx+CS], KERNEL_CS
    mov qword ptr [rbx+ORIG_RAX], 0xffffffffffffffff
    add qword ptr [rbx+RSP], 16
    mov [rbx+RIP], r13
    mov r14, [rax+RHT_FIRST]
rgc_next:
    mov rax, [r14+RHN_RETHOOK]
    mov rdi, [rax+RH_DATA]
    mov rsi, [r14+RHN_FUNC]
    mov rdx, r13
    mov rcx, rbx
    mov r8, [r14+RHN_DATA]
    call qword ptr [rax+RH_HANDLER]
    cmp r14, r12
    je rgc_handled
    mov r14, [r14+RHN_NEXT]
    jmp rgc_next
rgc_handled:
    mov [rbx+FRAME_SIZE], r13
    mov rax, [rip+rh_task]
    mov rdx, [rax+RHT_FIRST]
    mov rcx, [r12+RHN_NEXT]
    mov [rax+RHT_FIRST], rcx
    mov qword ptr [r12+RHN_NEXT], 0
rgc_recycle:
    mov rcx, [rdx+RHN_NEXT]
    mov rax, [rdx+RHN_RETHOOK]
    node_push rax+RH_FREE, rdx, r8
    mov rdx, rcx
    test rdx, rdx
    jnz rgc_recycle
    mov rax, [rbx+EFLAGS]
    mov [rbx+SS], rax
    pop r14
    pop r13
    pop r12
    pop rbx
    xor eax, eax
    ret

.balign 8
rh_task:                                // the task's rethook state (RETHOOK_TASK), set once
    .quad 0
