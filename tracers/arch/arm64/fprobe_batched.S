/*
 * Batched fprobe handlers for arm64 (tracers/core/fprobe_batch.py): an fprobe whose Python
 * handlers only observe gets these as its guest handlers, so a hit enters no Python. Each writes
 * one ring-buffer record (the layouts of fprobe_batch.BatchRecords): the fprobe's key, ip, ret_ip,
 * the CPU's flags word (DAIF), its entry data's address, at entry the return address
 * ftrace_regs_get_return_address reads (fregs->lr), then the ftrace_regs fields the handler was
 * given. Python calls the fprobe's handlers from the records when the buffer drains.
 * Called by the guest fprobe dispatch (fprobe.S) as handler(data x0 = the key, ip x1, ret_ip x2,
 * fregs x3, entry_data x4); each returns x0 = 0 (the exit is never skipped) and clobbers x9-x14,
 * x17.
 */

.include "macros.S"

/* A hit's record: lr into x17, the record reserved (none if the buffer refused it: a branch to
 * \done), then its head, the same words in both kinds (HEAD: key, ip, ret_ip, entry data, flags). */
.macro batched_head done
    mov x17, x30
    bl rb_reserve                       // x12 = the record (0: dropped); clobbers x9-x11, x13, x14
    cbz x12, \done
    str x0, [x12, #FBH_KEY]
    str x1, [x12, #FBH_IP]
    str x2, [x12, #FBH_RET_IP]
    str x4, [x12, #FBH_DATA]
    mrs x11, daif
    str x11, [x12, #FBH_FLAGS]
.endm

/* The type, which commits the record, and the handler's return: 0. */
.macro batched_commit done, type
    mov x11, #\type
    str x11, [x12, #HDR_TYPE]           // committed
\done:
    mov x30, x17
    mov x0, #0
    ret
.endm

.globl fprobe_batched_entry
fprobe_batched_entry:
    batched_head fbe_done
    ldr x11, [x3, #FREGS_LR]            // ftrace_regs_get_return_address: fregs->lr
    str x11, [x12, #FB_ENT_RETADDR]
    batched_entry_fields x3, x12
    batched_commit fbe_done, REC_FPROBE_ENTRY

.globl fprobe_batched_exit
fprobe_batched_exit:
    batched_head fbx_done
    batched_exit_fields x3, x12
    batched_commit fbx_done, REC_FPROBE_EXIT
