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

/* A hit's record: reserved (none if the buffer refused it: a jump to \done), then its head, the
 * same words in both kinds (HEAD: key, ip, ret_ip, entry data, flags). */
.macro batched_head done
    call rb_reserve                     // rax = the record (0: dropped); clobbers r10, r11
    test rax, rax
    jz \done
    mov [rax+FBH_KEY], rdi
    mov [rax+FBH_IP], rsi
    mov [rax+FBH_RET_IP], rdx
    mov [rax+FBH_DATA], r8
    pushfq
    pop qword ptr [rax+FBH_FLAGS]
.endm

/* The type, which commits the record, and the handler's return: 0. */
.macro batched_commit done, type
    mov qword ptr [rax+HDR_TYPE], \type     // committed
\done:
    xor eax, eax
    ret
.endm

.globl fprobe_batched_entry
fprobe_batched_entry:
    batched_head fbe_done
    mov r11, [rcx+FREGS_SP]
    mov r11, [r11]                      // ftrace_regs_get_return_address: the word at sp
    mov [rax+FB_ENT_RETADDR], r11
    batched_entry_fields rcx, rax
    batched_commit fbe_done, REC_FPROBE_ENTRY

.globl fprobe_batched_exit
fprobe_batched_exit:
    batched_head fbx_done
    batched_exit_fields rcx, rax
    batched_commit fbx_done, REC_FPROBE_EXIT
