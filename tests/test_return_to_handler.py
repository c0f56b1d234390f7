"""fgraph's return_to_handler by release: the instructions each kernel's trampoline runs, the exit
ftrace_regs it leaves (checked against the true registers), and what that means for an unwinder.

x86_64 changed twice (arch/x86/kernel/ftrace_64.S): torvalds/linux 20a0bc10272f (6.18-rc6) steps
back over the popped return slot (`subq $8, %rsp`, UNWIND_HINT_FUNC) and stores `%rsp` in the
ftrace_regs' sp slot after building it, i.e. the ftrace_regs' own address; 8bc11700e0d2 (7.0)
stores the sp the trampoline was entered with instead. arm64's return_to_handler
(arch/arm64/kernel/entry-ftrace.S) saves x0-x7 and fp in every release the lab models."""

import pytest

from emulator.asm import disassemble
from fixtures import catalog
from tracers import Lab
from tracers.core.fgraph import FgraphOps
from tracers.kernel_version import KernelVersion

FGRAPH_RELEASES = ["6.17", "6.18", "7.0"]  # fprobe and fgraph on ftrace_regs since 6.14


def _exits(arch, kernel, func="add3", args=(1, 2, 3)):
    """The entry ftrace_regs' sp and the exit ftrace_regs (with the truth) of one traced call."""
    lab = Lab.open(catalog.DEFAULT, arch, kernel=KernelVersion.parse(kernel))
    m, seen = lab.machine, {}

    def entry(trace, gops, fregs):
        seen["entry_sp"] = fregs.get_stack_pointer()
        return 1

    def ret(trace, gops, fregs):
        regs = dict(fregs.fields)
        seen.update(fields=regs, addr=fregs.addr, check=fregs.verify(), ip=fregs.get_instruction_pointer())
        if "sp" in regs:
            # the slot `subq $8, %rsp` stepped back over, what an ORC unwinder finds there, and what
            # ftrace_graph_ret_addr() makes of it while the frame is still on the shadow stack
            after_ret = lab.kernel.has("x86_return_to_handler_entry_sp")
            slot = regs["sp"] - 8 if after_ret else fregs.addr + lab.karch.ftrace_regs.size
            seen["slot"] = (slot, m.u64(slot), lab.fgraph.ret_addr(m.u64(slot), slot))

    gops = FgraphOps(entry, ret)
    gops.ops.filter = {lab.ftrace.site(func).ip}
    with lab.verify.holding(lab.fgraph):
        lab.fgraph.register(gops)
        lab.call(func, *args)
        lab.fgraph.unregister(gops)
    return lab, seen


# The kernel's instructions, from the diffs of 20a0bc10272f and 8bc11700e0d2 (the PATCHv2 mail of
# 3 Nov 2025, 367da3638167..823dbdd0eb41, and the stable backport 823dbdd0eb41..ae94f7b0fdf1), up to
# the call of ftrace_return_to_handler; FRAME_SIZE is sizeof(struct pt_regs), 0xa8.
X86_RETURN_TO_HANDLER = {
    "6.17": [
        "sub rsp, 0xa8",
        "mov qword ptr [rsp + 0x50], rax",
        "mov qword ptr [rsp + 0x60], rdx",
        "mov qword ptr [rsp + 0x20], rbp",
        "mov rdi, rsp",
    ],
    "6.18": [
        "sub rsp, 8",
        "sub rsp, 0xa8",
        "mov qword ptr [rsp + 0x50], rax",
        "mov qword ptr [rsp + 0x60], rdx",
        "mov qword ptr [rsp + 0x20], rbp",
        "mov qword ptr [rsp + 0x98], rsp",
        "mov rdi, rsp",
    ],
    "7.0": [
        "mov rdi, rsp",
        "sub rsp, 8",
        "sub rsp, 0xa8",
        "mov qword ptr [rsp + 0x50], rax",
        "mov qword ptr [rsp + 0x60], rdx",
        "mov qword ptr [rsp + 0x20], rbp",
        "mov qword ptr [rsp + 0x98], rdi",
        "mov rdi, rsp",
    ],
}


@pytest.mark.parametrize("kernel", FGRAPH_RELEASES)
@pytest.mark.parametrize("arch_name", ["x86_64"])  # arm64's return_to_handler did not change
def test_x86_return_to_handler_runs_the_releases_instructions(arch_name, kernel):
    lab = Lab.open(catalog.DEFAULT, arch_name, kernel=KernelVersion.parse(kernel))
    m, start = lab.machine, lab.fgraph.return_to_handler
    insns = disassemble(m.arch, m.read(start, 64), start)
    expected = X86_RETURN_TO_HANDLER[kernel]
    assert [t for _, _, t in insns[: len(expected)]] == expected
    assert insns[len(expected)][2].startswith("call ")  # ftrace_return_to_handler(fregs)


@pytest.mark.parametrize("kernel", FGRAPH_RELEASES)
def test_exit_ftrace_regs_hold_the_releases_fields_and_the_true_values(arch, kernel):
    """Every field the release saves is the true register at return_to_handler (ip: the real
    return address), but 6.18's sp on x86, which is the ftrace_regs' own address."""
    lab, seen = _exits(arch, kernel)
    fields, check = seen["fields"], seen["check"]
    cpu = lab.arch
    if arch == "arm64":
        assert set(fields) == {f"x{n}" for n in range(8)} | {"fp", "pc"}
    elif kernel == "6.17":
        assert set(fields) == {"ax", "dx", "bp", "ip"}
    else:
        assert set(fields) == {"ax", "dx", "bp", "sp", "ip"}
    assert fields[cpu.ret_regs[0]] == 6 and seen["ip"] == fields[cpu.pc]
    by_field = {c.field: c for c in check.checks}
    if kernel == "6.18" and arch == "x86_64":
        assert check.mismatch == ["sp"]
        true_sp = by_field["sp"].truth
        # movq %rsp, RSP(%rsp) after subq $8 and subq $(FRAME_SIZE): the ftrace_regs itself
        assert fields["sp"] == seen["addr"] == true_sp - 8 - lab.karch.ftrace_regs.size
    else:
        assert check.mismatch == []
    if "sp" in fields and kernel == "7.0":
        # the sp after the function's ret: the one its entry had, above the popped return address
        assert fields["sp"] == by_field["sp"].truth == seen["entry_sp"] + 8


@pytest.mark.parametrize("kernel", ["6.18", "7.0"])
@pytest.mark.parametrize("arch_name", ["x86_64"])  # only x86's return_to_handler keeps the slot
def test_the_restored_return_slot_unwinds_to_the_real_return_address(arch_name, kernel):
    """subq $8, %rsp makes the popped slot a return address again (UNWIND_HINT_FUNC): it still holds
    return_to_handler, which ftrace_graph_ret_addr() turns into the real return address, as the ORC
    unwinder does through a hooked frame; it sits 8 below 7.0's sp, FRAME_SIZE above 6.18's."""
    lab, seen = _exits(arch_name, kernel)
    addr, word, real = seen["slot"]
    assert addr == seen["entry_sp"]  # the return slot fgraph hooked at the entry
    assert word == lab.fgraph.return_to_handler
    assert real == seen["ip"] and lab.machine.symbols.lookup(real)[0].name == "ftlab_caller"
