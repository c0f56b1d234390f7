/*
 * What the BPF trampolines call, after kernel/bpf/trampoline.c (v6.17): __bpf_prog_enter_recur and
 * __bpf_prog_exit_recur around each program, __bpf_tramp_enter and __bpf_tramp_exit around a call
 * of the traced function. The lab's one task and CPU: current->bpf_ctx is one word
 * (current_bpf_ctx points at it), prog->active and the image's pcref are plain counters.
 * rcu_read_lock, migrate_disable and the run-time statistics (bpf_stats_enabled_key, off by
 * default) do nothing here.
 */

/* u64 __bpf_prog_enter_recur(struct bpf_prog *prog, struct bpf_tramp_run_ctx *run_ctx):
 * bpf_set_run_ctx, then this_cpu_inc_return(*(prog->active)) != 1 is a recursion: counted
 * (bpf_prog_inc_misses_counter) and 0 returned, so the trampoline skips the program; else
 * bpf_prog_start_time(), NO_START_TIME (1) with the statistics off. */
.globl __bpf_prog_enter_recur
__bpf_prog_enter_recur:
    mov rax, [rip+current_bpf_ctx]
    mov rdx, [rax]
    mov [rsi+BPF_TRAMP_RUN_CTX_SAVED_RUN_CTX], rdx
    mov [rax], rsi                      // current->bpf_ctx = &run_ctx->run_ctx
    inc qword ptr [rdi+BPF_PROG_ACTIVE]
    cmp qword ptr [rdi+BPF_PROG_ACTIVE], 1
    jne __bpf_prog_enter_recur_miss
    mov eax, 1                          // NO_START_TIME
    ret
__bpf_prog_enter_recur_miss:
    inc qword ptr [rdi+BPF_PROG_MISSES]
    xor eax, eax
    ret

/* void __bpf_prog_exit_recur(struct bpf_prog *prog, u64 start, struct bpf_tramp_run_ctx *run_ctx):
 * bpf_reset_run_ctx(run_ctx->saved_run_ctx); this_cpu_dec(*(prog->active)). */
.globl __bpf_prog_exit_recur
__bpf_prog_exit_recur:
    mov rax, [rip+current_bpf_ctx]
    mov rdx, [rdx+BPF_TRAMP_RUN_CTX_SAVED_RUN_CTX]
    mov [rax], rdx
    dec qword ptr [rdi+BPF_PROG_ACTIVE]
    ret

/* void __bpf_tramp_enter(struct bpf_tramp_image *tr): percpu_ref_get(&tr->pcref) */
.globl __bpf_tramp_enter
__bpf_tramp_enter:
    inc qword ptr [rdi+BPF_TRAMP_IMAGE_PCREF]
    ret

/* void __bpf_tramp_exit(struct bpf_tramp_image *tr): percpu_ref_put(&tr->pcref) */
.globl __bpf_tramp_exit
__bpf_tramp_exit:
    dec qword ptr [rdi+BPF_TRAMP_IMAGE_PCREF]
    ret

.balign 8
current_bpf_ctx:                        // &current->bpf_ctx
    .quad 0
