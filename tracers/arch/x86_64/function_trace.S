/*
 * The built-in tracers' hot paths for x86_64, in guest code, so that tracing a call runs no
 * Python: records go to the ring buffer (kernel/trace/ring_buffer.c), stamped with the counter
 * clock the guest keeps itself. A full buffer calls ring_buffer_full, where the consumer drains
 * it (or applies overwrite/drop). Python reads the records in bulk.
 */

/* rb_reserve: the next record, its timestamp written. Out: rax = the record (0: dropped),
 * r11 = the timestamp. Clobbers r10. */
rb_reserve:
    mov r10, [rip+rb_control]           // the ring buffer's control block (lab data)
rb_retry:
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jae rb_full
    imul rax, rax, REC_SIZE
    add rax, [r10+RB_BASE]
    mov r11, [r10+RB_CLOCK]             // trace_clock_counter
    add r11, 1
    mov [r10+RB_CLOCK], r11
    mov [rax+REC_TS], r11
    add qword ptr [r10+RB_HEAD], 1      // the caller fills it before anything can read it
    ret
rb_full:
    call ring_buffer_full               // drained: room again; drop mode: still full
    mov rax, [r10+RB_HEAD]
    cmp rax, [r10+RB_NR]
    jb rb_retry
    xor eax, eax
    xor r11d, r11d
    ret

/* The function tracer's ftrace_ops->func: function_trace_call(ip, parent_ip, op, fregs) with
 * rdi, rsi, rdx, rcx. Records ip, parent_ip and the ftrace_regs fields ftrace_caller saved, in
 * ftrace_regs_saved order. Returns the timestamp in rax. Clobbers rax, r10, r11. */
.globl function_trace_call
function_trace_call:
    call rb_reserve
    test rax, rax
    jz ftc_done
    mov r10, r11                        // the timestamp, returned
    mov qword ptr [rax+REC_TYPE], REC_ENTRY
    mov [rax+REC_IP], rdi
    mov [rax+REC_PARENT], rsi
    mov r11, [rcx+RAX]
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
    mov rax, r10
ftc_done:
    ret

/* function_graph's entry as the lone fgraph user (function_graph_enter_regs + its entryfunc):
 * the same shadow-stack frame fgraph.py pushes (ret, func, retp; the calltime as the tracer's
 * reserved data word with its header; the bitmap word), an entry record, and the return hooked.
 * In: rdi = ip, rsi = parent_ip, rdx = op, rcx = fregs. */
.globl graph_trace_entry
graph_trace_entry:
    mov r10, [rip+fg_control]
    mov rax, [r10+FG_CURR]
    add rax, FG_FRAME_WORDS+1
    cmp rax, FG_MAX_OFFSET
    jae fg_overrun                      // no room for a frame: trace_overrun
    mov rax, [r10+FG_DEPTH]
    add rax, 1
    cmp rax, [r10+FG_MAX_DEPTH]
    jae fg_done                         // deeper than max_graph_depth
    mov rax, [r10+FG_CURR]
    add rax, FG_FRAME_WORDS+3
    cmp rax, FG_MAX_OFFSET
    jae fg_done                         // no room for the calltime: not traced
    call function_trace_call            // the entry record; rax = its timestamp
    mov r10, [rip+fg_control]
    mov r11, [r10+FG_CURR]
    shl r11, 3
    add r11, [r10+FG_STACK]             // the frame
    mov [r11], rsi                      // ret
    mov [r11+8], rdi                    // func
    mov rdx, [rcx+RSP]
    mov [r11+16], rdx                   // retp: the return slot
    mov [r11+24], rax                   // calltime
    mov rax, [r10+FG_HEADER]
    mov [r11+32], rax
    mov rax, [r10+FG_BITMAP]
    mov [r11+40], rax
    add qword ptr [r10+FG_CURR], FG_FRAME_WORDS+3
    add qword ptr [r10+FG_DEPTH], 1
    mov rax, [r10+FG_RETURN]
    mov [rdx], rax                      // hook the return: the slot now says return_to_handler
fg_done:
    ret
fg_overrun:
    add qword ptr [r10+FG_OVERRUN], 1
    ret

/* function_graph's exit as the lone fgraph user (ftrace_return_to_handler + its retfunc):
 * pop the frame, put the real return address in fregs->ip, record the return registers and
 * the calltime. In: rdi = the exit fregs. Clobbers rax, rdx, r10, r11 (rcx is kept, so that
 * the guest and the Python paths leave the same registers behind). */
.globl graph_trace_return
graph_trace_return:
    push rcx
    mov r10, [rip+fg_control]
    mov rax, [r10+FG_CURR]
    mov rcx, [r10+FG_STACK]
    mov rdx, [rcx+rax*8-8]              // the bitmap word
    and rdx, 0x3ff                      // its offset back to the frame
    sub rax, rdx
    sub rax, 1                          // the frame's index
    mov [r10+FG_CURR], rax              // pop
    sub qword ptr [r10+FG_DEPTH], 1
    lea rcx, [rcx+rax*8]                // the frame
    mov rax, [rcx]
    mov [rdi+RIP], rax                  // where to return
    call rb_reserve
    test rax, rax
    jz gtr_done
    mov qword ptr [rax+REC_TYPE], REC_EXIT
    mov r11, [rcx+8]
    mov [rax+REC_IP], r11               // the function
    mov r11, [rcx]
    mov [rax+REC_PARENT], r11           // where it returns
    mov r11, [rdi+RAX]                  // the exit fields, in fgraph_exit_saved order
    mov [rax+REC_FIELDS], r11
    mov r11, [rdi+RDX]
    mov [rax+REC_FIELDS+8], r11
    mov r11, [rdi+RBP]
    mov [rax+REC_FIELDS+16], r11
    mov r11, [rdi+RIP]
    mov [rax+REC_FIELDS+24], r11
    mov r11, [rcx+24]                   // calltime
    mov [rax+REC_FIELDS+32], r11
gtr_done:
    pop rcx
    ret

/* The consumer's side: its one instruction carries the lab's hook. */
.globl ring_buffer_full
ring_buffer_full:
    ret

.balign 8
rb_control:                             // set once, when the buffer is made
    .quad 0
fg_control:                             // set once, when fgraph is attached
    .quad 0
