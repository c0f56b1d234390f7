"""The verifier's refusals with the kernel's one-line messages, and do_misc_fixups' inlining of the
trampoline helpers: the kernel's sequences, and the rewritten programs run over a hand-built
trampoline ctx compared with Python computing what the helpers return."""

from __future__ import annotations

import pytest

from test_bpf_interpreter import STACK_TOP, Memory, lddw, mov64
from tracers.bpf import fixups
from tracers.bpf.interpreter import Interpreter
from tracers.bpf.isa import BpfError, Insn
from tracers.bpf.verifier import CtxRules, check

EXIT = Insn(0x95)
M64 = (1 << 64) - 1
PT_REGS = CtxRules(size=168, writable=False)  # x86_64's struct pt_regs
TRAMPOLINE = CtxRules(size=24, writable=False, align=8)  # 2 arguments and the return value
HELPERS = {1, 2, 3, 6, 173, 183, 184, 185}
NAME = "prog.bpf.o: fentry/fib"


def verify(prog, ctx=TRAMPOLINE, helpers=HELPERS, kfuncs=()):
    check(prog, name=NAME, helpers=helpers, kfuncs=kfuncs, ctx=ctx)


def ldx(dst, src, off, size=8):
    return Insn({1: 0x71, 2: 0x69, 4: 0x61, 8: 0x79}[size], dst, src, off)


def test_a_program_the_kernel_accepts():
    prog = [
        Insn(0xBF, 6, 1),  # r6 = ctx
        ldx(7, 6, 8),  # the second argument
        ldx(0, 1, 16),  # the return value slot
        Insn(0x15, 7, 0, 2, 0),
        mov64(1, 0),
        Insn(0x85, 0, 0, 0, 6),
        lddw(2, 1 << 40),
        Insn(0x0F, 0, 2),
        Insn(0x7B, 10, 0, -8),
        Insn(0x7A, 10, 0, -512, 0),  # the frame's lowest word
        Insn(0x85, 0, 1, 0, 1),  # a bpf-to-bpf call to the subprogram below
        EXIT,
        ldx(0, 1, 4096),  # a subprogram's r1 is not known to be ctx
        EXIT,
    ]
    verify(prog)


@pytest.mark.parametrize(
    "prog,message",
    [
        ([Insn(0xFF), EXIT], "insn 0 (opcode 0xff): unknown opcode ff"),
        ([Insn(0x15, 1, 0, 5, 0), EXIT], "insn 0 (jeq r1, 0x0, +0x5): jump out of range from insn 0 to 6"),
        ([Insn(0x05, 0, 0, -3), EXIT], "insn 0 (jmp -0x3): jump out of range from insn 0 to -2"),
        (
            [Insn(0x15, 1, 0, 1, 0), lddw(0, 1), EXIT],
            "insn 0 (jeq r1, 0x0, +0x1): jump into the middle of ldimm64 insn 1",
        ),
        ([mov64(0, 0)], "insn 0 (mov64 r0, 0x0): last insn is not an exit or jmp"),
        (
            [Insn(0x85, 0, 1, 0, 1), EXIT, mov64(0, 1), mov64(0, 2)],
            "insn 3 (mov64 r0, 0x2): last insn is not an exit or jmp",  # the subprogram's
        ),
        (
            [Insn(0x85, 0, 1, 0, 1), Insn(0x05, 0, 0, 1), EXIT, EXIT],
            "insn 1 (jmp +0x1): jump out of range from insn 1 to 3",  # from main into the subprogram
        ),
        ([Insn(0x85, 0, 1, 0, 5), EXIT], "insn 0 (call pc+0x5): call to invalid destination"),
        ([Insn(0x85, 0, 0, 0, 999), EXIT], "insn 0 (call 0x3e7): invalid func unknown#999"),
        (
            [Insn(0x85, 0, 0, 0, 58), EXIT],
            "insn 0 (call 0x3a): program of this type cannot use helper bpf_override_return#58",
        ),
        ([Insn(0x85, 0, 2, 0, 9), EXIT], "insn 0 (call kfunc 0x9): calling kernel function #9 is not allowed"),
        ([mov64(10, 0), EXIT], "insn 0 (mov64 r10, 0x0): frame pointer is read only"),
        ([ldx(10, 1, 0), EXIT], "insn 0 (ldxdw r10, [r1+0x0]): frame pointer is read only"),
        ([Insn(0xDB, 1, 10, 0, 0x01), EXIT], "insn 0 (fetch_adddw [r1+0x0], r10): frame pointer is read only"),
        ([Insn(0x07, 1, 0, 0, 5), Insn(0x07, 11, 0, 0, 1), EXIT], "insn 1 (opcode 0x07): R11 is invalid"),
        ([Insn(0x7B, 10, 1, -516), EXIT], "insn 0 (stxdw [r10-0x204], r1): invalid write to stack R10 off=-516 size=8"),
        ([Insn(0x62, 10, 0, -2, 1), EXIT], "insn 0 (stw [r10-0x2], 0x1): invalid write to stack R10 off=-2 size=4"),
        ([ldx(0, 10, 0, 1), EXIT], "insn 0 (ldxb r0, [r10+0x0]): invalid read from stack R10 off=0 size=1"),
    ],
)
def test_refusals(prog, message):
    with pytest.raises(BpfError) as err:
        verify(prog)
    assert str(err.value) == f"{NAME}: {message}"


@pytest.mark.parametrize(
    "prog,ctx,message",
    [
        ([ldx(0, 1, 24), EXIT], TRAMPOLINE, "insn 0 (ldxdw r0, [r1+0x18]): invalid bpf_context access off=24 size=8"),
        ([ldx(0, 1, -8), EXIT], TRAMPOLINE, "insn 0 (ldxdw r0, [r1-0x8]): invalid bpf_context access off=-8 size=8"),
        # btf_ctx_access(): whole u64 slots, though a narrower read of one is fine
        ([ldx(0, 1, 4, 4), EXIT], TRAMPOLINE, "insn 0 (ldxw r0, [r1+0x4]): invalid bpf_context access off=4 size=4"),
        # kprobe_prog_is_valid_access(): aligned to the access size
        ([ldx(0, 1, 2, 4), EXIT], PT_REGS, "insn 0 (ldxw r0, [r1+0x2]): invalid bpf_context access off=2 size=4"),
        ([ldx(0, 1, 164, 8), EXIT], PT_REGS, "insn 0 (ldxdw r0, [r1+0xa4]): invalid bpf_context access off=164 size=8"),
        (
            [Insn(0xBF, 6, 1), mov64(1, 0), ldx(0, 6, 168), EXIT],
            PT_REGS,
            "insn 2 (ldxdw r0, [r6+0xa8]): invalid bpf_context access off=168 size=8",
        ),
        ([Insn(0x7B, 1, 2, 0), EXIT], PT_REGS, "insn 0 (stxdw [r1+0x0], r2): invalid bpf_context access off=0 size=8"),
        (
            [Insn(0x7A, 1, 0, 0, 1), EXIT],
            PT_REGS,
            "insn 0 (stdw [r1+0x0], 0x1): BPF_ST stores into R1 ctx is not allowed",
        ),
        (
            [Insn(0xDB, 1, 2, 0, 0), EXIT],
            CtxRules(168, writable=True),
            "insn 0 (xadddw [r1+0x0], r2): BPF_ATOMIC stores into R1 ctx is not allowed",
        ),
        (
            [Insn(0x7B, 1, 2, 168), EXIT],
            CtxRules(168, writable=True),
            "insn 0 (stxdw [r1+0xa8], r2): invalid bpf_context access off=168 size=8",
        ),
    ],
)
def test_ctx_refusals(prog, ctx, message):
    with pytest.raises(BpfError) as err:
        verify(prog, ctx)
    assert str(err.value) == f"{NAME}: {message}"


@pytest.mark.parametrize(
    "prog",
    [
        [ldx(0, 1, 0, 4), ldx(0, 1, 16), EXIT],  # in bounds
        [Insn(0x85, 0, 0, 0, 1), ldx(0, 1, 4096), EXIT],  # r1 after a call is the helper's
        [Insn(0x07, 1, 0, 0, 8), ldx(0, 1, 4096), EXIT],  # a moved ctx: not followed
        # r6 is ctx on one path only: the lab does not guess which
        [Insn(0x15, 1, 0, 1, 0), Insn(0xBF, 6, 1), ldx(0, 6, 4096), EXIT],
        # a loop head: what comes back is not known yet
        [Insn(0xBF, 6, 1), ldx(0, 6, 4096), Insn(0xBF, 6, 0), Insn(0x55, 0, 0, -3, 0), EXIT],
    ],
)
def test_what_one_forward_pass_cannot_tell_is_let_through(prog):
    verify(prog)


def test_writable_ctx():
    verify([Insn(0x7B, 1, 2, 160), EXIT], CtxRules(168, writable=True))


# -- do_misc_fixups ------------------------------------------------------------------------------

LDX_DW, AND64_K, JGE32_X, LSH64_K, ADD64_X, STX_DW, MOV64_K, JA = 0x79, 0x57, 0x3E, 0x67, 0x0F, 0x7B, 0xB7, 0x05
# kernel/bpf/verifier.c do_misc_fixups() (7.0), transcribed from its insn_buf
GET_FUNC_ARG = [
    Insn(LDX_DW, 0, 1, -8),
    Insn(AND64_K, 0, 0, 0, 0xFF),
    Insn(JGE32_X, 2, 0, 6),
    Insn(LSH64_K, 2, 0, 0, 3),
    Insn(ADD64_X, 2, 1),
    Insn(LDX_DW, 0, 2, 0),
    Insn(STX_DW, 3, 0, 0),
    Insn(MOV64_K, 0, 0, 0, 0),
    Insn(JA, 0, 0, 1),
    Insn(MOV64_K, 0, 0, 0, -22),
]
GET_FUNC_RET = [
    Insn(LDX_DW, 0, 1, -8),
    Insn(AND64_K, 0, 0, 0, 0xFF),
    Insn(LSH64_K, 0, 0, 0, 3),
    Insn(ADD64_X, 0, 1),
    Insn(LDX_DW, 3, 0, 0),
    Insn(STX_DW, 2, 3, 0),
    Insn(MOV64_K, 0, 0, 0, 0),
]


def call(helper):
    return Insn(0x85, 0, 0, 0, helper)


@pytest.mark.parametrize(
    "helper,kind,expected",
    [
        (183, "fentry", GET_FUNC_ARG),
        (184, "fexit", GET_FUNC_RET),
        (184, "fmod_ret", GET_FUNC_RET),
        (184, "fentry", [Insn(MOV64_K, 0, 0, 0, -95)]),  # -EOPNOTSUPP: no return value yet
        (185, "fexit", GET_FUNC_ARG[:2]),
        (173, "fentry", [Insn(LDX_DW, 0, 1, -16)]),
    ],
)
def test_the_kernels_sequences(helper, kind, expected):
    assert fixups.inline_tracing_helpers([call(helper), EXIT], kind) == [*expected, EXIT]


def test_before_7_0_nr_args_is_not_masked():
    assert fixups.inline_tracing_helpers([call(183), EXIT], "fentry", mask_nr_args=False) == [
        GET_FUNC_ARG[0],
        *GET_FUNC_ARG[2:],
        EXIT,
    ]


@pytest.mark.parametrize("kind", ["kprobe", "kretprobe", "kprobe.multi", "kprobe.session"])
def test_kprobe_programs_keep_their_calls(kind):
    prog = [call(173), call(183), EXIT]
    assert fixups.inline_tracing_helpers(prog, kind) == prog


CTX = 0x2000


def trampoline_ctx(args, ret, ip, flags=0):
    """The BPF trampoline's frame around ctx: ctx[-2] = ip, ctx[-1] = nr_args (fsession keeps
    flags above its low byte), ctx[0..n-1] the arguments, ctx[n] the return value."""
    memory = Memory()
    words = [ip, len(args) | flags, *args, ret]
    for i, word in enumerate(words):
        memory.write(CTX - 16 + 8 * i, (word & M64).to_bytes(8, "little"))
    return memory


def run(prog, memory):
    interp = Interpreter(memory, STACK_TOP, {}, {})  # no helpers: each call must have been inlined
    return interp.run(prog, CTX, None, name=NAME)


@pytest.mark.parametrize("n", range(-1, 5))
@pytest.mark.parametrize("kind", fixups.TRACING_KINDS)
def test_get_func_arg_inlined(kind, n):
    args = [0x1111, 0xFFFF_FFFF_FFFF_FFFE, 0x3333]
    memory = trampoline_ctx(args, ret=0x77, ip=0xFFFF_8000_1234_0000, flags=0x4200)
    prog = [
        Insn(0x7A, 10, 0, -8, 0x5A5A),  # the value slot, left alone on -EINVAL
        mov64(2, n),
        Insn(0xBF, 3, 10),
        Insn(0x07, 3, 0, 0, -8),
        call(183),
        EXIT,
    ]
    result = run(fixups.inline_tracing_helpers(prog, kind), memory)
    # bpf_get_func_arg(): 0 and the n-th argument for n < nr_args (as u32: JMP32), else -EINVAL
    ok = 0 <= n < len(args)
    assert result == (0 if ok else -22 & M64)
    assert memory.u64(STACK_TOP - 8) == (args[n] if ok else 0x5A5A)


@pytest.mark.parametrize("kind", fixups.TRACING_KINDS)
def test_get_func_ret_arg_cnt_and_ip_inlined(kind):
    args, ret, ip = [5, 6], 0xFFFF_FFFF_FFFF_FFEA, 0xFFFF_8000_1234_0000
    memory = trampoline_ctx(args, ret, ip, flags=0x100)
    prog = [
        Insn(0xBF, 6, 1),
        Insn(0xBF, 2, 10),
        Insn(0x07, 2, 0, 0, -8),
        call(184),  # bpf_get_func_ret(ctx, r10 - 8)
        Insn(0x7B, 10, 0, -16),
        Insn(0xBF, 1, 6),
        call(185),
        Insn(0x7B, 10, 0, -24),
        Insn(0xBF, 1, 6),
        call(173),
        EXIT,
    ]
    assert run(fixups.inline_tracing_helpers(prog, kind), memory) == ip
    has_ret = kind != "fentry"
    assert memory.u64(STACK_TOP - 16) == (0 if has_ret else -95 & M64)
    assert memory.u64(STACK_TOP - 8) == (ret if has_ret else 0)
    assert memory.u64(STACK_TOP - 24) == len(args)


def test_branches_across_a_patch_are_adjusted():
    """Jumps and bpf-to-bpf calls into, over and back across the inlined calls land where they did."""
    prog = [
        Insn(0xBF, 9, 1),  # 0: r9 = ctx
        mov64(7, 0),  # 1
        mov64(8, 3),  # 2
        Insn(0x85, 0, 1, 0, 13),  # 3: r0 = subprog(): a call over both patches
        Insn(0x0F, 7, 0),  # 4: r7 += 1000
        Insn(0x05, 0, 0, 2),  # 5: goto 8, just past the first patch: r7 += 1000 again
        Insn(0x07, 7, 0, 0, 100),  # 6: loop: r7 += 100
        call(185),  # 7: r0 = nr_args (2 instructions once inlined; r1 is still ctx)
        Insn(0x0F, 7, 0),  # 8: r7 += nr_args
        Insn(0x07, 8, 0, 0, -1),  # 9
        Insn(0x55, 8, 0, -5, 0),  # 10: if --r8 != 0 goto loop (back across the patch)
        Insn(0x06, 0, 0, 0, 1),  # 11: gotol 13
        mov64(7, -1),  # 12: poison, skipped
        Insn(0xBF, 1, 9),  # 13
        call(173),  # 14: r0 = ip
        Insn(0x0F, 0, 7),  # 15
        EXIT,  # 16
        mov64(0, 1000),  # 17: subprog
        EXIT,
    ]
    memory = trampoline_ctx([1, 2, 3, 4], ret=0, ip=0x4000)
    inlined = fixups.inline_tracing_helpers(prog, "fentry")
    assert len(inlined) == len(prog) + 1
    verify(inlined, ctx=CtxRules(size=40, writable=False, align=8), helpers=set())
    assert run(inlined, memory) == 0x4000 + 2 * 1000 + 2 * (100 + 4)


def test_a_jump_back_to_an_inlined_call_lands_on_its_first_instruction():
    prog = [
        mov64(6, 3),
        mov64(7, 0),
        call(185),  # 2: loop: r0 = nr_args, by ctx[-1] & 0xFF once inlined
        Insn(0x0F, 7, 0),
        mov64(0, 0x1005),  # what reaching only the `& 0xFF` would leave 5 of
        Insn(0x07, 6, 0, 0, -1),
        Insn(0x55, 6, 0, -5, 0),  # 6: if --r6 != 0 goto loop
        Insn(0xBF, 0, 7),
        EXIT,
    ]
    memory = trampoline_ctx([1, 2], ret=40, ip=0x4000)
    assert run(fixups.inline_tracing_helpers(prog, "fexit"), memory) == 3 * 2
