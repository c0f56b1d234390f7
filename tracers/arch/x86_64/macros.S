/*
 * Register save/restore sequences shared by the x86_64 trampolines (the kernel's save_mcount_regs
 * in ftrace_64.S and PUSH_REGS/POP_REGS in calling.h). Offsets are pt_regs' (ptrace-abi.h names).
 */

/* A pt_regs below the return address, holding the registers ftrace_regs promises (arguments, rax
 * and rbp; orig_ax = 0: not a syscall), ip and the traced function's sp at entry; then rdi = the
 * call site and rsi = the parent ip. added: the bytes pushed before it (ftrace_regs_caller's
 * flags); site: the kind of call site, fentry or mcount (the frame macros below). */
.macro save_mcount_regs added=0, site=fentry
    sub rsp, FRAME_SIZE
    mov [rsp+RAX], rax
    mov [rsp+RCX], rcx
    mov [rsp+RDX], rdx
    mov [rsp+RSI], rsi
    mov [rsp+RDI], rdi
    mov [rsp+R8], r8
    mov [rsp+R9], r9
    mov qword ptr [rsp+ORIG_RAX], 0
    mov [rsp+RBP], rbp
    mov rdi, [rsp+FRAME_SIZE+\added]   // the return address the site's call pushed
    mov [rsp+RIP], rdi
    sub rdi, MCOUNT_INSN_SIZE           // ip = the call site
    \site\()_frame \added
.endm

/* fentry (call __fentry__ before the prologue): the parent ip is the word above the return
 * address into the site, and where it sits is the traced function's sp at entry. */
.macro fentry_frame added
    lea rdx, [rsp+FRAME_SIZE+\added+8]
    mov [rsp+RSP], rdx
    mov rsi, [rdx]                      // parent_ip
.endm

/* mcount (-pg without -mfentry: call mcount after push rbp; mov rbp, rsp): the parent ip is
 * 8(%rbp), as save_mcount_regs found it without CC_USING_FENTRY (`movq 8(%rdx), %rsi` with rdx the
 * original rbp, arch/x86/kernel/ftrace_64.S up to 5.1; torvalds/linux 562e14f72292 "ftrace/x86:
 * Remove mcount support" took it out for 5.2). That slot is the one 5.1's ftrace_graph_caller
 * hooked (`leaq 8(%rdx), %rsi`), and the function's sp at entry: the lab stores it as the ftrace_regs
 * sp, so that fgraph, rethook and stack arguments find it as at fentry (5.1's ftrace_regs_caller
 * stored the site's rsp there; its ftrace_caller passed no regs at all). */
.macro mcount_frame added
    lea rdx, [rbp+8]
    mov [rsp+RSP], rdx
    mov rsi, [rdx]                      // parent_ip
.endm

/* save: bytes of the frame's top left on the stack (ftrace_regs_caller's direct-call path keeps
 * the flags and the trampoline's address there). */
.macro restore_mcount_regs save=0
    mov rax, [rsp+RAX]
    mov rcx, [rsp+RCX]
    mov rdx, [rsp+RDX]
    mov rsi, [rsp+RSI]
    mov rdi, [rsp+RDI]
    mov r8, [rsp+R8]
    mov r9, [rsp+R9]
    mov rbp, [rsp+RBP]
    add rsp, FRAME_SIZE - \save
.endm

/* Every general register, pushed into pt_regs order (r15 ends lowest). */
.macro push_regs
    push rdi
    push rsi
    push rdx
    push rcx
    push rax
    push r8
    push r9
    push r10
    push r11
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
.endm

.macro pop_regs
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    pop r11
    pop r10
    pop r9
    pop r8
    pop rax
    pop rcx
    pop rdx
    pop rsi
    pop rdi
.endm

/* return_to_handler's ftrace_regs, in every release: the return registers (rax, rdx) and rbp. */
.macro return_to_handler_save
    sub rsp, FRAME_SIZE
    mov [rsp+RAX], rax
    mov [rsp+RDX], rdx
    mov [rsp+RBP], rbp
.endm

/* ... then ftrace_return_to_handler(fregs), the return registers back, the ftrace_regs (and
 * whatever the release put below it: `popped`) off the stack, and on to the real return address
 * the exit stored in fregs->ip. (The kernel returns with a call/overwrite/ret sequence for IBT
 * and return-stack balance; a push/ret is equivalent here.) */
.macro return_to_handler_call popped=FRAME_SIZE
    mov rdi, rsp                        // fregs
.globl return_to_handler_call
return_to_handler_call:
    call ftrace_return_to_handler
    mov rdi, [rsp+RIP]                  // the real return address
    mov rax, [rsp+RAX]
    mov rdx, [rsp+RDX]
    add rsp, \popped
    push rdi
    ret
.endm

/* The graph exit dispatch, ftrace_return_to_handler(fregs) (kernel/trace/fgraph.c), for every
 * release's return_to_handler: fgraph pops the shadow stack and runs the fgraph_ops retfuncs in
 * the lab. As ftrace_ops_list_func, it leaves its argument in lab data and jumps to the block
 * that carries the lab's hook. */
.macro ftrace_return_to_handler_dispatch
.globl ftrace_return_to_handler
ftrace_return_to_handler:
    mov rax, [rip+return_args]
    mov [rax+RETURN_ARGS_FREGS], rdi
    jmp ftrace_return_to_handler_lab
.globl ftrace_return_to_handler_lab
ftrace_return_to_handler_lab:
    ret

.balign 8
return_args:                            // where ftrace_return_to_handler leaves its argument
    .quad 0
.endm

/* One saved ftrace_regs field (FREGS_\m) from \fregs into the \type record at \rec, through r11. */
.macro record_field fregs, rec, type, m
    mov r11, [\fregs+FREGS_\m]
    mov [\rec+\type\()_REGS_\m], r11
.endm

/* rax = the value the ip table (tracers/core/ip_table.py) whose header is at rax holds for the ip
 * in rdi, else a jump to \missing (rax = 0): hash_64(ip, bits) (include/linux/hash.h, the kernel's
 * ftrace_hash_key) is the home slot, probed linearly; \label names the loop. r11 = the slot.
 * Clobbers r8-r10 (rcx is kept). */
.macro ip_table_find missing, label
    movabs r8, GOLDEN_RATIO_64
    imul r8, rdi
    mov r9, rcx                         // shr takes its count in cl
    mov rcx, [rax+IP_TABLE_SHIFT]
    shr r8, cl                          // the home slot
    mov rcx, r9
    mov r9, [rax+IP_TABLE_MASK]
    mov r10, [rax+IP_TABLE_SLOTS]
\label:
    imul r11, r8, IP_SLOT_SIZE
    add r11, r10                        // the slot
    mov rax, [r11+IP_SLOT_IP]
    cmp rax, rdi
    je \label\()_found
    test rax, rax
    jz \missing                         // an empty slot: ip is not in the table
    add r8, 1
    and r8, r9                          // the next slot, wrapping
    jmp \label
\label\()_found:
    mov rax, [r11+IP_SLOT_VALUE]
.endm

/* rb_reserve's taking of the record at head rax (ring_buffer.S): its timestamp (the clock in r11,
 * plus one: trace_clock_counter) and type 0, not committed (the writer's type store commits it). */
.macro rb_take
    imul rax, [r10+RB_RECORD_SIZE]
    add rax, [r10+RB_BASE]
    add r11, 1
    mov [r10+RB_CLOCK], r11
    mov [rax+HDR_TS], r11
    mov qword ptr [rax+HDR_TYPE], 0
    add qword ptr [r10+RB_HEAD], 1      // the writer fills it before anything can read it
.endm

/* rb_reserve in the writer's own code, r10 = the ring buffer's control block: rax = the next
 * record, r11 its timestamp, or a jump to \full when the buffer is full (r10 and r11 = the clock,
 * as rb_reserve_full takes them). The clock is read in the block this is in: an insns timestamp
 * counts the instructions before that block. */
.macro rb_reserve_inline full
    mov r11, [r10+RB_CLOCK]
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jae \full
    rb_take
.endm
