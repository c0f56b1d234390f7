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

.globl fprobe_batched_entry
fprobe_batched_entry:
    mov x17, x30
    bl rb_reserve                       // x12 = the record (0: dropped); clobbers x9-x11, x13, x14
    cbz x12, fbe_done
    str x0, [x12, #FB_ENT_KEY]
    str x1, [x12, #FB_ENT_IP]
    str x2, [x12, #FB_ENT_RET_IP]
    str x4, [x12, #FB_ENT_DATA]
    ldr x11, [x3, #FREGS_LR]            // ftrace_regs_get_return_address: fregs->lr
    str x11, [x12, #FB_ENT_RETADDR]
    mrs x11, daif
    str x11, [x12, #FB_ENT_FLAGS]
    batched_entry_fields x3, x12
    mov x11, #REC_FPROBE_ENTRY
    str x11, [x12, #FB_ENT_TYPE]        // committed
fbe_done:
    mov x30, x17
    mov x0, #0
    ret

.globl fprobe_batched_exit
fprobe_batched_exit:
    mov x17, x30
    bl rb_reserve
    cbz x12, fbx_done
    str x0, [x12, #FB_RET_KEY]
    str x1, [x12, #FB_RET_IP]
    str x2, [x12, #FB_RET_RET_IP]
    str x4, [x12, #FB_RET_DATA]
    mrs x11, daif
    str x11, [x12, #FB_RET_FLAGS]
    batched_exit_fields x3, x12
    mov x11, #REC_FPROBE_EXIT
    str x11, [x12, #FB_RET_TYPE]        // committed
fbx_done:
    mov x30, x17
    mov x0, #0
    ret
