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

.globl ftlab_ret0
ftlab_ret0:                 // --stub NAME: a function that returns 0
    mov x0, #0
    ret

.globl ftlab_caller
ftlab_caller:               // the return address of every call into the guest: emulation stops here
    brk #0x800
