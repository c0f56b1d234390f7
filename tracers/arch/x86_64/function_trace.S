/*
 * function_trace_call for x86_64: the function tracer's ftrace_ops->func in guest code, so that
 * tracing a call runs no Python. It reserves the next record of the ring buffer (kernel/trace/
 * ring_buffer.c), stamps it with the counter clock the guest keeps itself, and stores ip,
 * parent_ip and the ftrace_regs fields ftrace_caller saved. A full buffer calls
 * ring_buffer_full, where the consumer drains it (or applies overwrite/drop).
 *
 * In: rdi = ip, rsi = parent_ip, rdx = op, rcx = fregs. Clobbers rax, r10, r11 (caller-saved).
 */
.globl function_trace_call
function_trace_call:
    mov r10, [rip+rb_control]           // the ring buffer's control block (lab data)
rb_reserve:
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jae rb_full
    imul rax, rax, REC_SIZE
    add rax, [r10+RB_BASE]              // the record
    mov r11, [r10+RB_CLOCK]             // trace_clock_counter
    add r11, 1
    mov [r10+RB_CLOCK], r11
    mov qword ptr [rax+REC_TYPE], REC_ENTRY
    mov [rax+REC_TS], r11
    mov [rax+REC_IP], rdi
    mov [rax+REC_PARENT], rsi
    mov r11, [rcx+RAX]                  // the fields ftrace_caller saved, in ftrace_regs_saved order
    mov [rax+REC_FIELDS], r11
    mov r11, [rcx+RCX]
    mov [rax+REC_FIELDS+8], r11
    mov r11, [rcx+RDX]
    mov [rax+REC_FIELDS+16], r11
    mov r11, [rcx+RSI]
    mov [rax+REC_FIELDS+24], r11
    mov r11, [rcx+RDI]
    mov [rax+REC_FIELDS+32], r11
    mov r11, [rcx+R8]
    mov [rax+REC_FIELDS+40], r11
    mov r11, [rcx+R9]
    mov [rax+REC_FIELDS+48], r11
    mov r11, [rcx+RBP]
    mov [rax+REC_FIELDS+56], r11
    mov r11, [rcx+RIP]
    mov [rax+REC_FIELDS+64], r11
    mov r11, [rcx+RSP]
    mov [rax+REC_FIELDS+72], r11
    add qword ptr [r10+RB_HEAD], 1      // commit
    ret
rb_full:
    call ring_buffer_full               // drained: room again; drop mode: still full
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jb rb_reserve
    ret

/* The consumer's side: its one instruction carries the lab's code hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
rb_control:                             // set once, when the buffer is made
    .quad 0
