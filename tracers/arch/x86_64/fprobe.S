/*
 * fprobe's dispatch for x86_64 in guest code (kernel/trace/fprobe.c, v6.19), for fprobes whose
 * handlers are guest code: fprobe_fgraph_entry and fprobe_return as fgraph's lone user, and
 * fprobe_ftrace_entry as fprobe_ftrace_ops' function. The tables are tracers/core/fprobe_guest.py's;
 * the shadow-stack words are fgraph.py's, pushed as its Python path pushes them.
 * Handlers are called as handler(data rdi, ip rsi, ret_ip rdx, fregs rcx, entry_data r8) and may
 * clobber rax, rcx, rdx, rsi, rdi, r8-r11 (the callers here reload what they need).
 */

.include "macros.S"

/* The header of the exit of the guest fprobe at rax, if it has one, at \at, which moves past it
 * and its data: id | words << 60. Clobbers \tmp. */
.macro fpe_exit_header at, tmp
    cmp qword ptr [rax+GFP_EXIT], 0
    je fpe_exit_header_none_\at
    mov \tmp, [rax+GFP_WORDS]
    shl \tmp, 60
    or \tmp, [rax+GFP_ID]
    mov [\at], \tmp
    mov \tmp, [rax+GFP_WORDS]
    lea \at, [\at+\tmp*8+8]
fpe_exit_header_none_\at:
.endm

/* fprobe_fgraph_entry: what function_graph_enter_regs and fprobe_fgraph_entry do together for the
 * lone user, in their order. No room for a frame: trace_overrun. Else the frame and its reserved
 * word are pushed; no room for the exits' data (more than FGRAPH_MAX_DATA_SIZE, or past
 * SHADOW_STACK_MAX_OFFSET): each fprobe misses, no handler runs. Else the data and its header are
 * reserved, each entry handler runs, and each exit not skipped gets a header (id | words << 60)
 * and its data, packed; if any exit will run, the reserved word becomes the bitmap and the return
 * is hooked, else the frame is popped. In: rdi = ip, rsi = parent_ip, rdx = op, rcx = fregs.
 * As a C function, it keeps rbx, rbp, r12-r15; where no fprobe on ip has an entry handler it calls
 * nothing and needs no frame. Below, rsi = fgraph's task state, rdx = the frame's index, r10 = the
 * fprobes on ip, r11 = where the next exit's header goes. */
.globl fprobe_fgraph_entry
fprobe_fgraph_entry:
    mov rax, [rip+fp_control]
    mov rsi, [rax+FPC_FGRAPH]           // fgraph's task state
    mov rdx, [rsi+FG_CURR]              // where the frame goes
    lea r8, [rdx+FG_FRAME_WORDS+1]
    cmp r8, FG_MAX_OFFSET
    jae fpe_overrun
    mov rax, [rax+FPC_GRAPH_IPS]
    ip_table_find fpe_out, fpe_find     // keeps rcx, rdx, rsi, rdi
    mov r10, rax                        // the fprobes on ip
    mov rax, rdx
    shl rax, 3
    add rax, [rsi+FG_STACK]             // the frame
    mov r9, [rcx+RSP]                   // the return slot
    mov r8, [r9]
    mov [rax+FG_FRAME_RET], r8
    mov [rax+FG_FRAME_FUNC], rdi
    mov [rax+FG_FRAME_RETP], r9
    mov qword ptr [rax+FG_PUSH_BITMAP], FG_FRAME_WORDS      // reserved, its offset to the frame
    lea r11, [rax+FG_PUSH_BITMAP+8]     // the exits' data: above the frame and that word
    lea r8, [rdx+FG_FRAME_WORDS+1]
    mov [rsi+FG_CURR], r8
    add qword ptr [rsi+FG_DEPTH], 1
    mov rax, [r10+FPROBE_AT_NEED]
    test rax, rax
    jz fpe_reserved
    cmp rax, FGRAPH_MAX_DATA_SIZE
    ja fpe_missed                       // fgraph_reserve_data refuses it
    shr rax, 3
    lea rax, [rdx+rax+FG_FRAME_WORDS+2]
    cmp rax, FG_MAX_OFFSET
    jae fpe_missed                      // no room for it
    mov [rsi+FG_CURR], rax              // reserved: the data, then its header
    mov rax, [r10+FPROBE_AT_NEED]
    mov r8, [r10+FPROBE_AT_HEADER]
    mov [r11+rax], r8
fpe_reserved:
    cmp qword ptr [r10+FPROBE_AT_ENTRIES], 0
    jne fpe_entries
    xor r9d, r9d                        // no entry handler to call: each exit's header
fpe_header:
    mov rax, [r10+r9*8+FPROBE_AT_SIZE]
    fpe_exit_header r11, r8
    add r9, 1
    cmp r9, [r10+FPROBE_AT_NR]
    jb fpe_header
fpe_done:
    lea rax, [rdx+FG_FRAME_WORDS+1]
    shl rax, 3
    add rax, [rsi+FG_STACK]             // the data
    cmp r11, rax
    je fpe_pop                          // no exit to run: the frame goes again
    mov r8, [rip+fp_control]
    mov r8, [r8+FPC_BITMAP]
    mov [rax-8], r8                     // the reserved word becomes the bitmap
    mov rdx, [rcx+RSP]
    mov r8, [rsi+FG_RETURN_TO_HANDLER]
    mov [rdx], r8                       // hook the return
fpe_out:
    ret
fpe_missed:
    xor r9d, r9d
fpe_miss_next:
    mov rax, [r10+r9*8+FPROBE_AT_SIZE]
    add qword ptr [rax+GFP_NMISSED], 1
    add r9, 1
    cmp r9, [r10+FPROBE_AT_NR]
    jb fpe_miss_next
fpe_pop:
    mov [rsi+FG_CURR], rdx
    sub qword ptr [rsi+FG_DEPTH], 1
    ret
fpe_overrun:
    add qword ptr [rsi+FG_OVERRUN], 1
    ret

/* Each fprobe's entry handler, then its exit's header unless the handler returned non-zero; in a
 * frame, as handlers may clobber every caller-saved register. Then fprobe_fgraph_entry's
 * memset(fgraph_data + used, 0, reserved_words - used) of what a skipped exit left unused: it takes
 * a count of words as bytes, clearing that many bytes. Back to fpe_done with its registers. */
fpe_entries:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push rdi
    push rcx                            // [rsp] fregs, [rsp+8] ip
    mov rbx, rsi
    mov r12, rdx
    mov r13, r10
    mov rbp, r11
    xor r14d, r14d
fpe_next:
    mov rax, [r13+r14*8+FPROBE_AT_SIZE] // the guest fprobe
    mov r9, [rax+GFP_ENTRY]
    test r9, r9
    jz fpe_exit
    xor r8d, r8d                        // entry_data: for an exit with data, after its header
    lea r10, [rbp+8]
    cmp qword ptr [rax+GFP_WORDS], 0
    cmovne r8, r10
    xor r10d, r10d
    cmp qword ptr [rax+GFP_EXIT], 0
    cmove r8, r10
    mov rdi, [rax+GFP_ENTRY_DATA]
    mov rsi, [rsp+8]
    mov rcx, [rsp]
    mov rdx, [rcx+RSP]
    mov rdx, [rdx]                      // ret_ip: ftrace_regs_get_return_address, the word at sp
    call r9
    test rax, rax
    jnz fpe_skip                        // non-zero: skip the exit (not counted as missed)
    mov rax, [r13+r14*8+FPROBE_AT_SIZE]
fpe_exit:
    fpe_exit_header rbp, r8
fpe_skip:
    add r14, 1
    cmp r14, [r13+FPROBE_AT_NR]
    jb fpe_next
    lea rax, [r12+FG_FRAME_WORDS+1]
    shl rax, 3
    add rax, [rbx+FG_STACK]             // the data
    mov rdx, [r13+FPROBE_AT_NEED]
    add rdx, rax
    sub rdx, rbp
    shr rdx, 3
    jz fpe_cleared
fpe_clear:
    mov byte ptr [rbp+rdx-1], 0
    sub rdx, 1
    jnz fpe_clear
fpe_cleared:
    mov rsi, rbx
    mov rdx, r12
    mov r11, rbp
    pop rcx
    pop rdi
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    jmp fpe_done

/* fprobe_return: what ftrace_return_to_handler and fprobe_return do together for the lone user:
 * pop the frame, put the real return address in fregs->ip, and call the exit handler of each
 * header stored at entry whose fprobe is still registered. In: rdi = the exit fregs. Clobbers rax,
 * rdx, r10, r11 only: the return path keeps the other registers the Python path keeps. */
.globl fprobe_return
fprobe_return:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi                            // [rsp+32]: fregs
    push rsi
    push rcx
    push r8
    push r9
    mov r15, [rip+fp_control]
    mov rbx, [r15+FPC_FGRAPH]
    mov rax, [rbx+FG_CURR]
    test rax, rax
    jz fprobe_empty                     // no frame to pop
    mov r12, [rbx+FG_STACK]
    mov r13, [r12+rax*8-8]              // the top word: the data's header
    mov rdx, r13
    and rdx, FGRAPH_FRAME_OFFSET_MASK
    mov r14, rax
    sub r14, rdx
    sub r14, 1                          // the frame's index
    lea rbp, [r12+r14*8]                // the frame
    mov rdx, [rbp+FG_FRAME_RET]
    mov [rdi+RIP], rdx                  // where to return
    shr r13, FGRAPH_DATA_SHIFT
    and r13, FGRAPH_DATA_MASK
    add r13, 1                          // the data's words
    sub rax, 1
    sub rax, r13
    lea r12, [r12+rax*8]                // the data
    lea r13, [r12+r13*8]                // its end
    mov r15, [r15+FPC_IDS]
fpr_next:
    cmp r12, r13
    jae fpr_pop
    mov rax, [r12]
    shl rax, 4
    shr rax, 4                          // the fprobe's id
    jz fpr_pop                          // a cleared header: no more exits
    mov rax, [r15+rax*8]                // its guest fprobe (0: unregistered since)
    test rax, rax
    jz fpr_skip
    mov rdi, [rax+GFP_EXIT_DATA]
    mov rsi, [rbp+FG_FRAME_FUNC]
    mov rdx, [rbp+FG_FRAME_RET]
    mov rcx, [rsp+32]
    xor r8d, r8d
    lea r9, [r12+8]
    cmp qword ptr [rax+GFP_WORDS], 0
    cmovne r8, r9
    call qword ptr [rax+GFP_EXIT]
fpr_skip:
    mov rax, [r12]
    shr rax, 60
    lea r12, [r12+rax*8+8]
    jmp fpr_next
fpr_pop:
    mov [rbx+FG_CURR], r14
    sub qword ptr [rbx+FG_DEPTH], 1
    pop r9
    pop r8
    pop rcx
    pop rsi
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

/* fprobe_ftrace_entry (6.19+): each entry-only fprobe on ip, called with parent_ip as ret_ip and
 * no entry data; a lone fprobe's handler is jumped to, as a compiler's tail call. In: rdi = ip,
 * rsi = parent_ip, rdx = op, rcx = fregs. As a C function, it keeps rbx, rbp, r12-r15 only; with
 * several fprobes [rsp] keeps fregs, [rsp+8] parent_ip, [rsp+16] ip. */
.globl fprobe_ftrace_entry
fprobe_ftrace_entry:
    mov rax, [rip+fp_control]
    mov rax, [rax+FPC_FTRACE_IPS]
    ip_table_find ffe_ret, ffe_find     // keeps rcx, rsi, rdi
    cmp qword ptr [rax+FPROBE_AT_NR], 1
    jne ffe_several
    mov rax, [rax+FPROBE_AT_SIZE]       // the one fprobe: its handler in this function's place
    mov rdx, rsi
    mov rsi, rdi
    mov rdi, [rax+GFP_ENTRY_DATA]
    xor r8d, r8d
    jmp qword ptr [rax+GFP_ENTRY]
ffe_ret:
    ret
ffe_several:
    push rbx
    push r12
    push rdi
    push rsi
    push rcx
    mov r12, rax
    xor ebx, ebx
ffe_next:
    mov rax, [r12+rbx*8+FPROBE_AT_SIZE]
    add rbx, 1
    mov rdi, [rax+GFP_ENTRY_DATA]
    mov rsi, [rsp+16]
    mov rdx, [rsp+8]
    mov rcx, [rsp]
    xor r8d, r8d
    call qword ptr [rax+GFP_ENTRY]
    cmp rbx, [r12+FPROBE_AT_NR]
    jb ffe_next
    pop rcx
    pop rsi
    pop rdi
    pop r12
    pop rbx
    ret

/* An fprobe's Python handler (the data is the fprobe's id): its arguments into the mailbox, then
 * the block carrying the lab's hook, which calls it; rax = what it returned (an entry handler's
 * non-zero skips the exit). Clobbers r10. */
.macro python_handler name
.globl \name
\name:
    mov r10, [rip+\name\()_args]
    mov [r10+PY_ARGS_ID], rdi
    mov [r10+PY_ARGS_IP], rsi
    mov [r10+PY_ARGS_RET_IP], rdx
    mov [r10+PY_ARGS_FREGS], rcx
    mov [r10+PY_ARGS_DATA], r8
    call \name\()_lab
    mov rax, [r10+PY_ARGS_RESULT]
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

/* No frame to pop: its one instruction carries a lab hook that stops with fgraph's error. */
.globl fprobe_empty
fprobe_empty:
    ret

.balign 8
fp_control:                             // the guest dispatch's tables, set once
    .quad 0
