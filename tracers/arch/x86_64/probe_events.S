/*
 * Probe events' handlers for x86_64 in guest code (kernel/trace/trace_fprobe.c fentry_trace_func,
 * fexit_trace_func; trace_probe_tmpl.h process_fetch_insn): each hit writes one record (the
 * layouts of tracers/output/probe_records.py), its fetchargs fetched by the program
 * tracers/probe_events/program.py compiled. Called by the guest fprobe dispatch (fprobe.S) as
 * handler(data rdi, ip rsi, ret_ip rdx, fregs rcx, entry_data r8); each returns rax = 0 and may
 * clobber rcx, rdx, rsi, rdi, r8-r11.
 */

.include "macros.S"

/* An f event's entry: data = its program. */
.globl probe_entry_event
probe_entry_event:
    push rbx
    mov rbx, rdi                        // the program
    call rb_reserve                     // rax = the record (0: dropped); clobbers r10, r11
    test rax, rax
    jz pe_done
    mov r11, [rbx+PROG_EVENT]
    mov [rax+PROBE_ENT_EVENT], r11
    mov [rax+PROBE_ENT_IP], rsi
    mov r11, [rcx+FREGS_SP]
    mov r11, [r11]                      // ftrace_regs_get_return_address: hooked, if fgraph ran first
    mov [rax+PROBE_ENT_PARENT], r11
    pushfq
    pop qword ptr [rax+PROBE_ENT_FLAGS]
    probe_entry_fields rcx, rax
    mov rdi, rax
    lea rsi, [rax+PROBE_ENT_FETCH]
    call fetch_args
    mov [rdi+PROBE_ENT_FAULTS], rax
    mov qword ptr [rdi+PROBE_ENT_TYPE], REC_PROBE_ENTRY      // committed
pe_done:
    pop rbx
    xor eax, eax
    ret

/* An f SYM%return event's entry: the first SAVED_ARGS (8) arguments into its entry data, for $argN at
 * the exit: di, si, dx, cx, r8, r9, then the words above the return address. */
.globl probe_save_args
probe_save_args:
    .irp i, DI, SI, DX, CX, R8, R9
    mov r11, [rcx+FREGS_\i]
    mov [r8], r11
    add r8, 8
    .endr
    mov r10, [rcx+FREGS_SP]
    mov r11, [r10+8]
    mov [r8], r11
    mov r11, [r10+16]
    mov [r8+8], r11
    xor eax, eax
    ret

/* An f SYM%return event's exit: data = its program, ip = the function, ret_ip = where it returned,
 * entry_data = the arguments saved at entry. */
.globl probe_exit_event
probe_exit_event:
    push rbx
    mov rbx, rdi
    call rb_reserve
    test rax, rax
    jz px_done
    mov r11, [rbx+PROG_EVENT]
    mov [rax+PROBE_RET_EVENT], r11
    mov [rax+PROBE_RET_IP], rsi
    mov [rax+PROBE_RET_PARENT], rdx
    pushfq
    pop qword ptr [rax+PROBE_RET_FLAGS]
    probe_exit_fields rcx, rax
    .irp i, 0, 1, 2, 3, 4, 5
    mov r11, [r8]
    mov [rax+PROBE_RET_ARG\i], r11
    add r8, 8
    .endr
    sub r8, 48                          // back to the saved arguments, for $argN
    mov rdi, rax
    lea rsi, [rax+PROBE_RET_FETCH]
    call fetch_args
    mov [rdi+PROBE_RET_FAULTS], rax
    mov qword ptr [rdi+PROBE_RET_TYPE], REC_PROBE_EXIT        // committed
px_done:
    pop rbx
    xor eax, eax
    ret

/* Run the program at rbx: each STORE puts the value in the next word at rsi. A load outside every
 * mapping (the region table at pe_regions: nr, then base and end pairs) faults its argument: its
 * bit in the result, and the steps up to its STORE skipped. The ops are tested most frequent
 * first. In: rcx = fregs, r8 = entry data. Out: rax = the faulted arguments' bits. Clobbers rbx,
 * rdx, r9-r11. */
.globl fetch_args
fetch_args:
    lea r9, [rbx+PROG_SIZE]             // the first step
    xor r10d, r10d                      // the argument
    xor r11d, r11d                      // the faults
    xor eax, eax                        // the value
fa_step:
    mov rbx, [r9+STEP_OP]
    mov rdx, [r9+STEP_OPERAND]
    add r9, STEP_SIZE
    test rbx, rbx
    jz fa_end                           // OP_END
    cmp rbx, OP_FREG
    je fa_freg
    cmp rbx, OP_STORE
    je fa_store
    cmp rbx, OP_DATA
    je fa_data
    cmp rbx, OP_LOAD
    je fa_load
    cmp rbx, OP_ADD
    je fa_add
    cmp rbx, OP_IMM
    je fa_imm
    cmp rbx, OP_STACKLOAD
    je fa_stackload
    jmp fa_fault                        // OP_FAULT
fa_end:
    mov rax, r11
    ret
fa_freg:
    mov rax, [rcx+rdx]
    jmp fa_step
fa_data:
    mov rax, [r8+rdx]
    jmp fa_step
fa_imm:
    mov rax, rdx
    jmp fa_step
fa_add:
    add rax, rdx
    jmp fa_step
fa_store:
    mov [rsi+r10*8], rax
    add r10, 1
    jmp fa_step
fa_stackload:                           // regs_get_kernel_stack_nth: 0 off the task's stack
    mov rdx, STACK_BASE
    cmp rax, rdx
    jb fa_zero
    mov rdx, STACK_LAST
    cmp rax, rdx
    ja fa_zero
    mov rax, [rax]
    jmp fa_step
fa_zero:
    xor eax, eax
    jmp fa_step
fa_load:                                // rdx bytes at rax, if one region holds them all
    push r12
    push r13
    push r14
    mov r12, [rip+pe_regions]
    mov r12, [r12]                      // the table
    mov r13, [r12]
fa_region:
    test r13, r13
    jz fa_unmapped
    sub r13, 1
    add r12, 16
    cmp rax, [r12-8]                    // below its base
    jb fa_region
    mov r14, [r12]
    sub r14, rdx
    cmp rax, r14                        // past its end
    ja fa_region
    pop r14
    pop r13
    pop r12
    cmp rdx, 1
    je fa_load1
    cmp rdx, 2
    je fa_load2
    cmp rdx, 4
    je fa_load4
    mov rax, [rax]
    jmp fa_step
fa_load1:
    movzx eax, byte ptr [rax]
    jmp fa_step
fa_load2:
    movzx eax, word ptr [rax]
    jmp fa_step
fa_load4:
    mov eax, dword ptr [rax]
    jmp fa_step
fa_unmapped:
    pop r14
    pop r13
    pop r12
fa_fault:
    bts r11, r10
fa_skip:
    mov rbx, [r9+STEP_OP]
    add r9, STEP_SIZE
    cmp rbx, OP_STORE
    jne fa_skip
    add r10, 1
    jmp fa_step

.balign 8
pe_regions:                             // where the table of the machine's mappings is, set once
    .quad 0
