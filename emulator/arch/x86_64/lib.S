/*
 * The kernel's library functions loaded objects call, as byte loops with the results of the
 * kernel's (lib/string.c: x86_64 has its own memcpy, memmove and memset only; crypto/memneq.c),
 * the libgcc helpers gcc emits calls to, and the retpoline thunks. Loaded after runtime.S.
 */

.globl memcmp
memcmp:                     // rdi, rsi, rdx = n: the first differing bytes' difference (lib/string.c)
    xor eax, eax
memcmp_loop:
    test rdx, rdx
    jz memcmp_done
    movzx eax, byte ptr [rdi]
    movzx ecx, byte ptr [rsi]
    sub eax, ecx
    jnz memcmp_done
    inc rdi
    inc rsi
    dec rdx
    jmp memcmp_loop
memcmp_done:
    ret

.globl __crypto_memneq
__crypto_memneq:            // non-zero if the n bytes differ, in time independent of where (crypto/memneq.c)
    xor eax, eax
memneq_loop:
    test rdx, rdx
    jz memneq_done
    movzx ecx, byte ptr [rdi]
    xor cl, byte ptr [rsi]
    or eax, ecx
    inc rdi
    inc rsi
    dec rdx
    jmp memneq_loop
memneq_done:
    ret

.globl strlen
strlen:
    mov rax, rdi
strlen_loop:
    cmp byte ptr [rax], 0
    je strlen_done
    inc rax
    jmp strlen_loop
strlen_done:
    sub rax, rdi
    ret

.globl strnlen
strnlen:                    // rdi = s, rsi = count
    xor eax, eax
strnlen_loop:
    cmp rax, rsi
    jae strnlen_done
    cmp byte ptr [rdi+rax], 0
    je strnlen_done
    inc rax
    jmp strnlen_loop
strnlen_done:
    ret

.globl strcmp
strcmp:                     // -1, 0 or 1, comparing unsigned chars (lib/string.c)
    movzx eax, byte ptr [rdi]
    movzx ecx, byte ptr [rsi]
    cmp eax, ecx
    jne strcmp_differ
    test eax, eax
    jz strcmp_done
    inc rdi
    inc rsi
    jmp strcmp
strcmp_differ:
    sbb eax, eax            // CF from the cmp: c1 < c2 gives -1, else 0
    or eax, 1
strcmp_done:
    ret

.globl strncmp
strncmp:                    // rdi, rsi, rdx = count
    test rdx, rdx
    jz strncmp_equal
    movzx eax, byte ptr [rdi]
    movzx ecx, byte ptr [rsi]
    cmp eax, ecx
    jne strcmp_differ
    test eax, eax
    jz strncmp_equal
    inc rdi
    inc rsi
    dec rdx
    jmp strncmp
strncmp_equal:
    xor eax, eax
    ret

.globl strchr
strchr:                     // the first (char)c, the terminator included; NULL if none
    mov rax, rdi
strchr_loop:
    movzx ecx, byte ptr [rax]
    cmp cl, sil
    je strchr_done
    test cl, cl
    jz strchr_null
    inc rax
    jmp strchr_loop
strchr_null:
    xor eax, eax
strchr_done:
    ret

.globl memchr
memchr:                     // rdi = s, sil = c, rdx = n
    mov rax, rdi
memchr_loop:
    test rdx, rdx
    jz memchr_null
    cmp byte ptr [rax], sil
    je memchr_done
    inc rax
    dec rdx
    jmp memchr_loop
memchr_null:
    xor eax, eax
memchr_done:
    ret

.globl strcpy
strcpy:                     // returns dst
    mov rax, rdi
    mov rcx, rdi
strcpy_loop:
    movzx edx, byte ptr [rsi]
    mov byte ptr [rcx], dl
    inc rsi
    inc rcx
    test dl, dl
    jnz strcpy_loop
    ret

.globl strscpy
.globl sized_strscpy
strscpy:                    // since 6.8 strscpy() is a macro calling sized_strscpy (include/linux/string.h)
sized_strscpy:              // rdi = dst, rsi = src, rdx = count: the length, or -E2BIG if truncated
    xor eax, eax
    test rdx, rdx
    jz strscpy_e2big
strscpy_loop:
    movzx ecx, byte ptr [rsi+rax]
    mov byte ptr [rdi+rax], cl
    test cl, cl
    jz strscpy_done
    inc rax
    cmp rax, rdx
    jb strscpy_loop
    mov byte ptr [rdi+rax-1], 0
strscpy_e2big:
    mov rax, 0xfffffffffffffff9 // -E2BIG
strscpy_done:
    ret

/*
 * libgcc's helpers. The kernel has none of these (lib/ and arch/x86/lib/ give __sw_hweight32/64
 * for hweight, and no TImode division): a kernel module calling them fails at modpost. gcc emits
 * them for user C (__builtin_popcount without -mpopcnt, unsigned __int128 / and %).
 */
.globl __popcountdi2
__popcountdi2:
    xor eax, eax
popcount_loop:
    test rdi, rdi
    jz popcount_done
    lea rcx, [rdi-1]
    and rdi, rcx            // clears the lowest set bit
    inc eax
    jmp popcount_loop
popcount_done:
    ret

.globl __popcountsi2
__popcountsi2:
    mov edi, edi
    jmp __popcountdi2

.globl __udivti3
__udivti3:                  // rsi:rdi / rcx:rdx, into rdx:rax
    jmp ftlab_udivmodti4

.globl __umodti3
__umodti3:
    call ftlab_udivmodti4
    mov rax, r10
    mov rdx, r11
    ret

.globl __divti3
__divti3:                   // truncated towards 0: the quotient is negative if the signs differ
    push rbx
    mov rbx, rsi
    xor rbx, rcx
    call abs_both
    call ftlab_udivmodti4
    test rbx, rbx
    jns divti3_done
    neg rax
    adc rdx, 0
    neg rdx
divti3_done:
    pop rbx
    ret

.globl __modti3
__modti3:                   // the remainder has the dividend's sign
    push rbx
    mov rbx, rsi
    call abs_both
    call ftlab_udivmodti4
    mov rax, r10
    mov rdx, r11
    test rbx, rbx
    jns modti3_done
    neg rax
    adc rdx, 0
    neg rdx
modti3_done:
    pop rbx
    ret
abs_both:                   // |n| in rsi:rdi, |d| in rcx:rdx
    test rsi, rsi
    jns abs_divisor
    neg rdi
    adc rsi, 0
    neg rsi
abs_divisor:
    test rcx, rcx
    jns abs_done
    neg rdx
    adc rcx, 0
    neg rcx
abs_done:
    ret

.globl ftlab_udivmodti4
ftlab_udivmodti4:                 // rsi:rdi / rcx:rdx: quotient in rdx:rax, remainder in r11:r10
    mov r8, rdx
    mov r9, rcx
    mov rax, rdx
    or rax, rcx
    jz udivmod_by_zero
    xor r10d, r10d
    xor r11d, r11d
    mov ecx, 128
udivmod_loop:               // shift a bit of n into the remainder; subtract d where it fits
    shl rdi, 1
    rcl rsi, 1
    rcl r10, 1
    rcl r11, 1
    mov rax, r10
    mov rdx, r11
    jb udivmod_take         // CF: a bit shifted out: the remainder is past 2^128, above any d
    sub rax, r8
    sbb rdx, r9
    jb udivmod_next
    jmp udivmod_set
udivmod_take:
    sub rax, r8
    sbb rdx, r9
udivmod_set:
    mov r10, rax
    mov r11, rdx
    or rdi, 1
udivmod_next:
    dec ecx
    jnz udivmod_loop
    mov rax, rdi
    mov rdx, rsi
    ret
udivmod_by_zero:
    div rax                 // rax is 0: the divide error (#DE) a hardware division by zero raises
    ret

/*
 * Retpoline thunks (arch/x86/lib/retpoline.S), one per register but rsp (asm/GEN-for-each-reg.h).
 * The kernel's is a call/pause/lfence loop that keeps speculation from the indirect branch and
 * then returns to the target; architecturally it jumps to the register, which is what the
 * emulated CPU (no speculation) sees, so a plain jmp models it faithfully.
 */
.irp reg, rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15
.globl __x86_indirect_thunk_\reg
__x86_indirect_thunk_\reg:
    jmp \reg
.endr

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

/* arch/x86/lib/error-inject.c: override_function_with_return() sets regs->ip here, so that a
 * probe at a function's entry returns to its caller with the return value the probe set. */
.globl just_return_func
just_return_func:
    ret
