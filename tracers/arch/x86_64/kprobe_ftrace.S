/*
 * kprobe_ftrace_handler for x86_64 in guest code (arch/x86/kernel/kprobes/ftrace.c, v6.17;
 * KPROBES_ON_FTRACE), for the kprobes on an ftrace site whose pre_handlers are all guest code
 * (probe events' kprobe_dispatcher: tracers/arch/x86_64/probe_events.S). It is the func of each such
 * point's ftrace_ops (FTRACE_OPS_FL_SAVE_REGS: the site calls ftrace_regs_caller, so fregs is a full
 * pt_regs, ftrace_get_regs(fregs)). The tables are tracers/core/kprobe_guest.py's; current_kprobe is
 * the word tracers/core/kprobes.py reads and writes for its own handlers, so a hit while either side
 * handles a kprobe counts a miss.
 *
 * As the kernel: get_kprobe(ip) (the point's guest kprobes, by an ip table); kprobe_running():
 * kprobes_inc_nmissed_count(p), each probe of the point; else regs->ip = ip + sizeof(kprobe_opcode_t)
 * (as if the int3 had trapped), current_kprobe = p, each pre_handler until one returns non-zero
 * (aggr_pre_handler, the lab's Kprobes._pre_handlers; each run counts nhit); if none did, regs->ip = ip +
 * MCOUNT_INSN_SIZE (as if the 5-byte NOP had been stepped; these points have no post_handler), then
 * the original ip back; current_kprobe = NULL. No ftrace_test_recursion_trylock, as ops_list.S and
 * fprobe.S take none: guest code calls no traced function, so it would always be taken and given
 * back (the lab's Python kprobe_ftrace_handler, kprobes.py, takes it, as fprobe.py does).
 * A pre_handler is called as handler(data rdi, ip rsi, 0 rdx, regs rcx) and may clobber rax, rcx,
 * rdx, rsi, rdi, r8-r11.
 * In: rdi = ip, rsi = parent_ip, rdx = op, rcx = fregs. Clobbers rax, rdx, r8-r10 (rcx is kept).
 * r11 is kept too: ftrace_regs_caller saves r11 but does not restore it, so what the ops function
 * leaves there is the r11 the next hit's pt_regs shows; the kernel's is whatever its compiled
 * handler left (r11 is call-clobbered), the lab's Python dispatch leaves it as it was, and so
 * does this, so that both paths' snapshots agree.
 */

.include "macros.S"

.globl kprobe_ftrace_handler
kprobe_ftrace_handler:
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rcx
    push r11
    mov rax, [rip+kp_control]
    mov rax, [rax+KPC_TABLE]
    ip_table_find kpf_out, kpf_find     // get_kprobe(ip): the point (0: none, as when unregistered)
    mov rbx, rax                        // its guest kprobes: nr, then their addresses
    mov r12, rdi                        // ip
    mov r13, rcx                        // regs
    mov rax, [rip+kp_control]
    cmp qword ptr [rax+KPC_CURRENT], 0
    jne kpf_missed                      // kprobe_running()
    mov [rax+KPC_CURRENT], rbx          // current_kprobe = p
    mov r14, [r13+RIP]                  // orig_ip
    lea rax, [r12+KPROBE_OPCODE_SIZE]
    mov [r13+RIP], rax                  // as if the breakpoint had hit
    xor r15d, r15d
kpf_next:
    cmp r15, [rbx+KPROBE_AT_NR]
    jae kpf_done
    mov rax, [rbx+r15*8+KPROBE_AT_SIZE] // the guest kprobe
    add r15, 1
    add qword ptr [rax+GKP_NHIT], 1
    mov rdi, [rax+GKP_DATA]
    mov rsi, r12
    xor edx, edx
    mov rcx, r13
    call qword ptr [rax+GKP_PRE]
    test rax, rax
    jz kpf_next
    jmp kpf_clear                       // a pre_handler changed regs->ip: no single-step emulated
kpf_done:
    lea rax, [r12+MCOUNT_INSN_SIZE]
    mov [r13+RIP], rax                  // as if the NOP had been stepped (for post handlers: none)
    mov [r13+RIP], r14                  // the original ip back
kpf_clear:
    mov rax, [rip+kp_control]
    mov qword ptr [rax+KPC_CURRENT], 0  // current_kprobe = NULL
    jmp kpf_out
kpf_missed:
    xor r15d, r15d
kpf_miss_next:
    cmp r15, [rbx+KPROBE_AT_NR]
    jae kpf_out
    mov rax, [rbx+r15*8+KPROBE_AT_SIZE]
    add qword ptr [rax+GKP_NMISSED], 1
    add r15, 1
    jmp kpf_miss_next
kpf_out:
    pop r11
    pop rcx
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    ret

.balign 8
kp_control:                             // the guest kprobes' control block, set once
    .quad 0
