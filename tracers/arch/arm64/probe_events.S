/*
 * Probe events' handlers for arm64 in guest code (kernel/trace/trace_fprobe.c fentry_trace_func,
 * fexit_trace_func, trace_fprobe_entry_handler; trace_probe_tmpl.h process_fetch_insn): the
 * macros each event's handler is written in, and what they call. tracers/builtin/probe_code.py
 * writes one handler per event from its fetch steps (tracers/probe_events/program.py) and
 * assembles them after this file; each hit writes one record (tracers/output/probe_records.py).
 * The guest fprobe dispatch (fprobe.S) calls a handler as handler(data x0, ip x1, ret_ip x2,
 * fregs x3, entry_data x4); each returns x0 = 0 and may clobber x0-x17.
 * In a handler: x0 = the value being fetched, x12 = the record, x9 = the faulted arguments' bits,
 * x17 = its return address.
 */

.include "macros.S"

/* A handler's record, reserved inline (rb_reserve_inline): x12 = it, on at \done\()_record;
 * clobbers x9-x11, x13, x14. When the buffer is full, probe_reserve_full (after the handler's ret)
 * has rb_reserve_full drain it (lr is in x17 already), then goes on to the record, or to \done
 * when it was dropped. */
.macro probe_reserve done
    ldr x9, rb_control                  // the ring buffer's control block
    rb_reserve_inline \done\()_full
\done\()_record:
.endm

.macro probe_reserve_full done
\done\()_full:
    bl rb_reserve_full
    cbnz x12, \done\()_record
    b \done
.endm

/* Every record's head (probe_records.py HEAD: the same words in each kind): lr into x17, the
 * record reserved inline, its event, ip (x1) and the CPU's flags word; x9 = the faulted fetches'
 * bits, none yet. Then the kind writes its parent and its register fields, the fetches fill the
 * rest, and probe_record_end commits it. */
.macro probe_record_begin event, done
    mov x17, x30
    probe_reserve \done
    mov x11, #\event
    str x11, [x12, #PROBE_EVENT]
    str x1, [x12, #PROBE_IP]
    mrs x11, daif
    str x11, [x12, #PROBE_FLAGS]
    mov x9, #0
.endm

/* The faults, then the type, which commits the record; every handler returns 0. */
.macro probe_record_end done, type
    str x9, [x12, #PROBE_FAULTS]
    mov x11, #\type
    str x11, [x12, #HDR_TYPE]           // committed
\done:
    mov x30, x17
    mov x0, #0
    ret
    probe_reserve_full \done
.endm

/* An f event's entry: its parent, fregs->lr (ftrace_regs_get_return_address: hooked, if fgraph
 * ran first), then the ftrace_regs fields. */
.macro probe_entry_begin event, done
    probe_record_begin \event, \done
    ldr x11, [x3, #FREGS_LR]
    str x11, [x12, #PROBE_PARENT]
    probe_entry_fields x3, x12
.endm

.macro probe_entry_end done
    probe_record_end \done, REC_PROBE_ENTRY
.endm

/* An f SYM%return event's exit: ip = the function, its parent ret_ip = where it returned. */
.macro probe_exit_begin event, done
    probe_record_begin \event, \done
    str x2, [x12, #PROBE_PARENT]
    probe_exit_fields x3, x12
.endm

.macro probe_exit_end done
    probe_record_end \done, REC_PROBE_EXIT
.endm

/* A return event's entry, when its fetchargs read $argN: those arguments into the entry data. */
.macro probe_save_begin
    mov x17, x30
.endm

.macro probe_save_end
    mov x30, x17
    mov x0, #0
    ret
.endm

/* The fetch steps (program.py's ops). */
.macro fetch_freg offset
    ldr x0, [x3, #\offset]
.endm

.macro fetch_data offset
    ldr x0, [x4, #\offset]
.endm

.macro fetch_const word
    ldr x0, \word
.endm

.macro fetch_add word
    ldr x10, \word
    add x0, x0, x10
.endm

.macro fetch_store offset
    str x0, [x12, #\offset]
.endm

.macro fetch_save offset
    str x0, [x4, #\offset]
.endm

/* regs_get_kernel_stack_nth: the word at x0 if it is on the task's stack, else 0. */
.macro fetch_stackload
    bl probe_stack_word
.endm

/* A register the snapshot lacks: the argument faults. */
.macro fetch_fault skip, arg
    mov x10, #1
    lsl x10, x10, #\arg
    orr x9, x9, x10
    b \skip
.endm

/* The load's bytes at x0, if one of the machine's mappings holds them all (then on at \ok), else
 * the argument faults. */
.macro fetch_check skip, arg, ok, size
    mov x13, #\size
    bl probe_mapped
    cbnz x10, \ok
    fetch_fault \skip, \arg
\ok:
.endm

.macro fetch_load1 skip, arg, ok
    fetch_check \skip, \arg, \ok, 1
    ldrb w0, [x0]
.endm

.macro fetch_load2 skip, arg, ok
    fetch_check \skip, \arg, \ok, 2
    ldrh w0, [x0]
.endm

.macro fetch_load4 skip, arg, ok
    fetch_check \skip, \arg, \ok, 4
    ldr w0, [x0]
.endm

.macro fetch_load8 skip, arg, ok
    fetch_check \skip, \arg, \ok, 8
    ldr x0, [x0]
.endm

/* x10 = 1 if one region of the table at pe_regions (nr, then base and end pairs) holds the x13
 * bytes at x0, else 0. Clobbers x13-x16. */
probe_mapped:
    add x13, x13, x0                    // the end of the read
    ldr x14, pe_regions
    ldr x14, [x14]                      // the table
    ldr x15, [x14], #8
pm_region:
    cbz x15, pm_unmapped
    sub x15, x15, #1
    ldp x10, x16, [x14], #16            // a region's base and end
    cmp x0, x10
    b.lo pm_region
    cmp x16, x13
    b.lo pm_region
    mov x10, #1
    ret
pm_unmapped:
    mov x10, #0
    ret

/* regs_get_kernel_stack_nth: x0 = the word at x0 if it is on the task's stack, else 0.
 * Clobbers x10, x11. */
probe_stack_word:
    adr x10, pe_stack
    ldp x10, x11, [x10]
    cmp x0, x10
    b.lo psw_zero
    cmp x0, x11
    b.hi psw_zero
    ldr x0, [x0]
    ret
psw_zero:
    mov x0, #0
    ret

/* The words the code above reads, which the lab places after every handler: keystone
 * (0.9.2, arm64) offsets a branch to an absolute address by the data before it. */
.macro probe_events_data
.balign 8
pe_stack:                               // the task's stack: its base and its last whole word
    .quad STACK_BASE
    .quad STACK_LAST
pe_regions:                             // the lab data word that holds the region table's address
    .quad PE_REGIONS
.endm
