"""The machine: kernel privilege, calls, the budget, faults, nested calls, instruction counting."""

import pytest
import unicorn

from emulator import BudgetExhausted, GuestFault, Machine
from emulator import arch as arches
from fixtures import catalog


@pytest.fixture
def machine(arch):
    m = Machine(arches.get(arch))
    m.load(catalog.variant(arch, "funcs").path)
    return m


def test_runs_at_kernel_privilege(machine):
    if machine.arch.name == "arm64":
        assert machine.reg("pstate") & 0xF == 0x5  # EL1h
    else:
        assert (machine.reg("cs"), machine.reg("ss")) == (0x10, 0x18)  # __KERNEL_CS / __KERNEL_DS
        assert machine.reg("cs") & 3 == 0  # CPL 0


def test_stack_arguments(machine):
    # sum10 takes 4 (x86_64) or 2 (arm64) of its ten arguments from the stack
    args = (1, -2, 3, -4, 5, -6, 7, -8, 9, -10)
    assert machine.call("sum10", *args) == sum(k * a for k, a in enumerate(args, 1))


def test_struct_returned_in_two_registers(machine):
    assert machine.call("divmod", -47, 5, ret="pair") == (-9, -2)


def test_budget_stops_runaway_code(machine):
    machine.budget = 10_000
    with pytest.raises(
        BudgetExhausted, match=r"instruction budget of 10,000 exhausted at 0x[0-9a-f]+ <fib(\+0x[0-9a-f]+)?>: \w+"
    ):
        machine.call("fib", 30)
    machine.budget = 10**8
    assert machine.call("fib", 10) == 55  # the machine is still usable


def test_fault_names_pc_and_instruction(machine):
    with pytest.raises(
        GuestFault, match=r"read of unmapped address 0x10 at 0x[0-9a-f]+ <popcount_buf\+0x[0-9a-f]+>: \w+"
    ):
        machine.call("popcount_buf", 0x10, 4)


STORE = {"arm64": "str x1, [x0, #8]\n    ret", "x86_64": "mov qword ptr [rdi + 8], rsi\n    ret"}


def test_store_fault_names_the_exact_address(machine, tmp_path):
    src = tmp_path / "store.S"
    src.write_text(f".globl store\nstore:\n    {STORE[machine.arch.name]}\n")
    store = machine.load_lab_code(src)["store"]
    with pytest.raises(GuestFault, match=r"write to unmapped address 0x1238 at 0x[0-9a-f]+ <store>: "):
        machine.call(store, 0x1230, 7)
    heap = machine.HEAP[0] + 0x123
    machine.call(store, heap, 0x55)  # the machine is still usable, and stores land
    assert machine.u64(heap + 8) == 0x55


def test_data_pages_are_not_executable(machine):
    """As with the kernel's NX: the heap, stack and lab data are read+write only, and so is an
    object's data once it is on pages of its own."""
    with pytest.raises(GuestFault, match=r"execution of non-executable address 0x10000000 at 0x10000000 "):
        machine.call(machine.HEAP[0])
    table = machine.address_of("nibble_bits")  # .rodata, after .text
    page = (table + 0xFFF) & ~0xFFF  # a page holding no code
    text_end = max(a + n for a, n in machine.objects[0].sections[".text"])
    assert page >= text_end
    with pytest.raises(GuestFault, match=rf"execution of non-executable address {page:#x} at {page:#x} "):
        machine.call(page)
    assert machine.call("fib", 10) == 55  # code still runs


def test_call_hooks_fire_per_call_and_their_exceptions_end_the_run(machine):
    seen = []
    machine.hook_call(seen.append, machine.address_of("chain_c"))
    assert machine.call("chain_a", 10) == 129 and seen == [machine.address_of("chain_c")] * 2

    def boom(addr):
        raise ValueError(f"boom at {addr:#x}")

    machine.hook_call(boom, machine.address_of("chain_b"))
    with pytest.raises(ValueError, match="boom at"):
        machine.call("chain_a", 10)
    assert machine.call("fib", 10) == 55  # nothing is left pending


def test_nested_call_from_a_hook_leaves_the_caller_intact(machine):
    inner = []
    machine.hook_code(lambda addr: inner.append(machine.call("fib", 10)), machine.address_of("chain_c"))
    assert machine.call("chain_a", 10) == 129
    assert inner == [55, 55]


def test_instruction_count_is_exact(machine):
    """The block-hook count equals a per-instruction hook's count (the slow, obvious reference)."""
    seen = [0]

    def every_insn(uc, addr, size, _):
        seen[0] += 1

    machine.count_instructions(True)
    h = machine.uc.hook_add(unicorn.UC_HOOK_CODE, every_insn)
    machine.uc.ctl_flush_tb()
    before = machine.insns
    machine.call("fib", 12)
    machine.call("crc32_bitwise", 0, b"123456789" * 7, 63)
    assert machine.insns - before == seen[0] > 1000
    machine.uc.hook_del(h)
    machine.count_instructions(False)


def test_unknown_symbol(machine):
    with pytest.raises(Exception, match="no symbol 'nosuch'"):
        machine.call("nosuch")
