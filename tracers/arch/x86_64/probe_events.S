/*
 * Probe events' handlers for x86_64 in guest code (kernel/trace/trace_fprobe.c fentry_trace_func,
 * fexit_trace_func, trace_fprobe_entry_handler; trace_kprobe.c kprobe_trace_func,
 * kretprobe_trace_func, trace_kprobe_entry_handler;
 * trace_probe_tmpl.h process_fetch_insn): the
 * macros each event's handler is written in, and what they call. tracers/builtin/probe_code.py
 * writes one handler per event from its fetch steps (tracers/probe_events/program.py) and
 * assembles them after this file; each hit writes one record (tracers/output/probe_records.py).
 * The guest fprobe dispatch (fprobe.S) calls a handler as handler(data rdi, ip rsi, ret_ip rdx,
 * fregs rcx, entry_data r8), as do the guest kretprobe's entry and return (rethook.S) with a pt_regs;
 * each returns rax = 0 and may clobber rcx, rdx, rsi, rdi, r8-r11.
 * In a handler: rax = the value being fetched, rdi = the record, r9 = the faulted arguments' bits.
 */

.include "macros.S"

/* A handler's record, reserved inline (rb_reserve_inline): rax = it, on at \done\()_record;
 * clobbers r10, r11. When the buffer is full, probe_reserve_full (after the handler's ret) has
 * rb_reserve_full drain it, then goes on to the record, or to \done when it was dropped. */
.macro probe_reserve done
    mov r10, rb_control                 // the word holding the ring buffer's control block
    mov r10, [r10]                      // (keystone makes `[address]` rip-relative)
    rb_reserve_inline \done\()_full
\done\()_record:
.endm

.macro probe_reserve_full done
\done\()_full:
    call rb_reserve_full
    test rax, rax
    jnz \done\()_record
    jmp \done
.endm

/* Every record's head (probe_records.py HEAD: the same words in each kind): reserved inline, its
 * event, ip (rsi) and the CPU's flags word; r9 = the faulted fetches' bits, none yet. Then the kind
 * writes its parent and its register fields, the fetches fill the rest, and probe_record_end
 * commits it. */
.macro probe_record_begin event, done
    probe_reserve \done
    mov rdi, rax
    mov qword ptr [rdi+PROBE_EVENT], \event
    mov [rdi+PROBE_IP], rsi
    pushfq
    pop qword ptr [rdi+PROBE_FLAGS]
    xor r9d, r9d
.endm

/* The faults, then the type, which commits the record; every handler returns 0 (a kprobe's
 * pre_handler: kprobe_dispatcher never skips the single-step). */
.macro probe_record_end done, type
    mov [rdi+PROBE_FAULTS], r9
    mov qword ptr [rdi+HDR_TYPE], \type    // committed
\done:
    xor eax, eax
    ret
    probe_reserve_full \done
.endm

/* The record's parent: the word at the snapshot's sp (\sp: its offset in rcx's struct). */
.macro probe_parent_at_sp sp
    mov r11, [rcx+\sp]
    mov r11, [r11]
    mov [rdi+PROBE_PARENT], r11
.endm

/* An f event's entry: its parent, the word at sp (ftrace_regs_get_return_address: hooked, if
 * fgraph ran first), then the ftrace_regs fields. */
.macro probe_entry_begin event, done
    probe_record_begin \event, \done
    probe_parent_at_sp FREGS_SP
    probe_entry_fields rcx, rdi
.endm

.macro probe_entry_end done
    probe_record_end \done, REC_PROBE_ENTRY
.endm

/* An f SYM%return event's exit: ip = the function, its parent ret_ip = where it returned. */
.macro probe_exit_begin event, done
    probe_record_begin \event, \done
    mov [rdi+PROBE_PARENT], rdx
    probe_exit_fields rcx, rdi
.endm

.macro probe_exit_end done
    probe_record_end \done, REC_PROBE_EXIT
.endm

/* A p event's pre_handler on an ftrace site (trace_kprobe.c kprobe_dispatcher -> kprobe_trace_func),
 * which the guest kprobe_ftrace_handler (kprobe_ftrace.S) calls as handler(data rdi, ip rsi,
 * 0 rdx, regs rcx): regs is ftrace_regs_caller's full pt_regs, regs->ip the probe + 1. The record's
 * ip is the probe address (entry->ip = tk->rp.kp.addr), its parent the word at regs->sp (the
 * return address, which decoding keeps at offset 0 only), then the pt_regs fields. */
.macro probe_kprobe_begin event, done
    probe_record_begin \event, \done
    probe_parent_at_sp RSP
    probe_kprobe_fields rcx, rdi
.endm

.macro probe_kprobe_end done
    probe_record_end \done, REC_PROBE_KPROBE
.endm

/* An r event's return handler (trace_kprobe.c kretprobe_dispatcher -> kretprobe_trace_func), which
 * the guest rethook_trampoline_handler (rethook.S) calls as handler(data rdi, func rsi, ret_ip rdx,
 * regs rcx, the node's data r8): regs is the rethook trampoline's pt_regs, regs->ip the real return
 * address. The record's ip is the function, its parent where it returned, then the pt_regs fields. */
.macro probe_kretprobe_begin event, done
    probe_record_begin \event, \done
    mov [rdi+PROBE_PARENT], rdx
    probe_kretprobe_fields rcx, rdi
.endm

.macro probe_kretprobe_end done
    probe_record_end \done, REC_PROBE_KRETPROBE
.endm

/* A return event's entry, when its fetchargs read $argN: those arguments into the entry data
 * (an f event's, trace_fprobe_entry_handler; an r event's, trace_kprobe_entry_handler). */
.macro probe_save_begin
.endm

.macro probe_save_end
    xor eax, eax
    ret
.endm

/* The fetch steps (program.py's ops). */
.macro fetch_freg offset
    mov rax, [rcx+\offset]
.endm

.macro fetch_data offset
    mov rax, [r8+\offset]
.endm

.macro fetch_const word
    mov rax, [rip+\word]
.endm

.macro fetch_add word
    add rax, [rip+\word]
.endm

.macro fetch_store offset
    mov [rdi+\offset], rax
.endm

.macro fetch_save offset
    mov [r8+\offset], rax
.endm

/* regs_get_kernel_stack_nth: the word at rax if it is on the task's stack, else 0. */
.macro fetch_stackload
    call probe_stack_word
.endm

/* A register the snapshot lacks: the argument faults. */
.macro fetch_fault skip, arg
    bts r9, \arg
    jmp \skip
.endm

/* The load's bytes at rax, if one of the machine's mappings holds them all (then on at \ok),
 * else the argument faults. */
.macro fetch_check skip, arg, ok, size
    mov edx, \size
    call probe_mapped
    jb \ok                              // CF: mapped
    bts r9, \arg
    jmp \skip
\ok:
.endm

.macro fetch_load1 skip, arg, ok
    fetch_check \skip, \arg, \ok, 1
    movzx eax, byte ptr [rax]
.endm

.macro fetch_load2 skip, arg, ok
    fetch_check \skip, \arg, \ok, 2
    movzx eax, word ptr [rax]
.endm

.macro fetch_load4 skip, arg, ok
    fetch_check \skip, \arg, \ok, 4
    mov eax, dword ptr [rax]
.endm

.macro fetch_load8 skip, arg, ok
    fetch_check \skip, \arg, \ok, 8
    mov rax, [rax]
.endm

/* CF set if one region of the table at pe_regions (nr, then base and end pairs) holds the rdx
 * bytes at rax. Clobbers rdx, r10, r11. */
probe_mapped:
    add rdx, rax                        // the end of the read
    mov r10, [rip+pe_regions]
    mov r10, [r10]                      // the table
    mov r11, [r10]
pm_region:
    test r11, r11
    jz pm_unmapped
    sub r11, 1
    add r10, 16
    cmp rax, [r10-8]                    // below its base
    jb pm_region
    cmp [r10], rdx                      // its end before the read's
    jb pm_region
    stc
    ret
pm_unmapped:
    clc
    ret

/* regs_get_kernel_stack_nth: rax = the word at rax if it is on the task's stack, else 0.
 * Clobbers r10. */
probe_stack_word:
    mov r10, STACK_BASE
    cmp rax, r10
    jb psw_zero
    mov r10, STACK_LAST
    cmp rax, r10
    ja psw_zero
    mov rax, [rax]
    ret
psw_zero:
    xor eax, eax
    ret

/* The words the code above reads, which the lab places after every handler: keystone
 * (0.9.2, arm64) offsets a branch to an absolute address by the data before it. */
.macro probe_events_data
.balign 8
pe_regions:                             // the lab data word that holds the region table's address
    .quad PE_REGIONS
.endm
