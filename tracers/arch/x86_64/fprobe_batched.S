/*
 * Batched fprobe handlers for x86_64 (tracers/core/fprobe_batch.py): an fprobe whose Python
 * handlers only observe gets these as its guest handlers, so a hit enters no Python. Each writes
 * one ring-buffer record (the layouts of fprobe_batch.BatchRecords): the fprobe's key, ip, ret_ip,
 * the CPU's flags word, its entry data's address, at entry the return address
 * ftrace_regs_get_return_address reads (the word at sp), then the ftrace_regs fields the handler
 * was given. Python calls the fprobe's handlers from the records when the buffer drains.
 * Called by the guest fprobe dispatch (fprobe.S) as handler(data rdi = the key, ip rsi,
 * ret_ip rdx, fregs rcx, entry_data r8); each returns rax = 0 (the exit is never skipped) and
 * clobbers r10, r11.
 */

.include "macros.S"

.globl fprobe_batched_entry
fprobe_batched_entry:
    call rb_reserve                     // rax = the record (0: dropped); clobbers r10, r11
    test rax, rax
    jz fbe_done
    mov [rax+FB_ENT_KEY], rdi
    mov [rax+FB_ENT_IP], rsi
    mov [rax+FB_ENT_RET_IP], rdx
    mov [rax+FB_ENT_DATA], r8
    mov r11, [rcx+FREGS_SP]
    mov r11, [r11]                      // ftrace_regs_get_return_address: the word at sp
    mov [rax+FB_ENT_RETADDR], r11
    pushfq
    pop qword ptr [rax+FB_ENT_FLAGS]
    batched_entry_fields rcx, rax
    mov qword ptr [rax+FB_ENT_TYPE], REC_FPROBE_ENTRY       // committed
fbe_done:
    xor eax, eax
    ret

.globl fprobe_batched_exit
fprobe_batched_exit:
    call rb_reserve
    test rax, rax
    jz fbx_done
    mov [rax+FB_RET_KEY], rdi
    mov [rax+FB_RET_IP], rsi
    mov [rax+FB_RET_RET_IP], rdx
    mov [rax+FB_RET_DATA], r8
    pushfq
    pop qword ptr [rax+FB_RET_FLAGS]
    batched_exit_fields rcx, rax
    mov qword ptr [rax+FB_RET_TYPE], REC_FPROBE_EXIT        // committed
fbx_done:
    xor eax, eax
    ret
