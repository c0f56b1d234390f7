/*
 * What the lab's "kernel" supplies to loaded objects on x86_64 (Intel syntax, assembled by keystone).
 */
.globl __fentry__
.globl mcount
__fentry__:                 // with dynamic ftrace every site is a NOP or a call to a trampoline,
mcount:                     // so the compiled-in target is just RET (arch/x86/kernel/ftrace_64.S)
    ret

.globl __x86_return_thunk
__x86_return_thunk:         // -mfunction-return=thunk-extern: every return jumps here
    ret

.globl memcpy
memcpy:                     // rdi = dst, rsi = src, rdx = n; returns dst
    mov rax, rdi
    mov rcx, rdx
    rep movsb
    ret

.globl memmove
memmove:
    mov rax, rdi
    mov rcx, rdx
    cmp rdi, rsi
    jbe memmove_forward     // dst below src: a forward copy never overwrites unread bytes
    lea rsi, [rsi+rcx-1]
    lea rdi, [rdi+rcx-1]
    std
    rep movsb
    cld
    ret
memmove_forward:
    rep movsb
    ret

.globl memset
memset:                     // rdi = dst, esi = byte, rdx = n; returns dst
    mov r8, rdi
    mov eax, esi
    mov rcx, rdx
    rep stosb
    mov rax, r8
    ret

.globl ftlab_ret0
ftlab_ret0:                 // --stub NAME: a function that returns 0
    xor eax, eax
    ret

.globl ftlab_caller
ftlab_caller:               // the return address of every call into the guest: emulation stops here
    hlt
