/*
 * What the lab's "kernel" supplies to loaded objects on arm64 (assembled by keystone).
 */
.globl _mcount
.globl mcount
.globl __fentry__
_mcount:                    // with dynamic ftrace the compiled-in target is never called
mcount:
__fentry__:
    ret

.globl memcpy
memcpy:                     // x0 = dst, x1 = src, x2 = n; returns dst
    mov x3, x0
memcpy_loop:
    cbz x2, memcpy_done
    ldrb w4, [x1], #1
    strb w4, [x3], #1
    sub x2, x2, #1
    b memcpy_loop
memcpy_done:
    ret

.globl memmove
memmove:
    cmp x0, x1
    b.ls memcpy             // dst at or below src: a forward copy never overwrites unread bytes
    add x3, x0, x2
    add x1, x1, x2
memmove_loop:
    cbz x2, memmove_done
    ldrb w4, [x1, #-1]!
    strb w4, [x3, #-1]!
    sub x2, x2, #1
    b memmove_loop
memmove_done:
    ret

.globl memset
memset:                     // x0 = dst, w1 = byte, x2 = n; returns dst
    mov x3, x0
memset_loop:
    cbz x2, memset_done
    strb w1, [x3], #1
    sub x2, x2, #1
    b memset_loop
memset_done:
    ret

// The lab's Python does these at their entry (emulator/console.py), then they return.
.globl _printk
_printk:                    // printk(): the message goes to the machine's console lines
    ret
.globl __warn_printk
__warn_printk:              // WARN()'s message, after a cut-here line
    ret
.globl __stack_chk_fail
__stack_chk_fail:           // a stack canary was overwritten: a fault naming the caller
    ret

.globl __stack_chk_guard
__stack_chk_guard:          // -fstack-protector's canary without a per-task one (arch/arm64/kernel/process.c)
    .quad 0

.globl ftlab_ret0
ftlab_ret0:                 // --stub NAME: a function that returns 0
    mov x0, #0
    ret

.globl ftlab_caller
ftlab_caller:               // the return address of every call into the guest: emulation stops here
    brk #0x800
