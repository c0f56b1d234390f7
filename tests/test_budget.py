"""The instruction budget's native block hook (emulator/budget.py, native/blockhook.c): it counts
what a per-block Python count counts, stops runaway code at the same block every run, dispatches
the lab's block hooks, and where it was not built the lab falls back to unicorn's count."""

import pytest

from emulator import BudgetExhausted, Machine
from emulator import arch as arches
from emulator import budget as native
from emulator.machine import DEFAULT_BUDGET
from tracers import Lab
from tracers.core.fprobe import Fprobe

LOOP = {  # an endless loop counting its rounds in the return register
    "x86_64": "    xor eax, eax\nagain:\n    add rax, 1\n    jmp again\n",
    "arm64": "    mov x0, #0\nagain:\n    add x0, x0, #1\n    b again\n",
}

pytestmark = pytest.mark.skipif(native.LIB is None, reason="the native budget hook was not built (no C compiler)")


def spin(arch, tmp_path, budget):
    """An endless loop under a budget: where it stopped, and the loop counter then."""
    m = Machine(arches.get(arch), budget)
    src = tmp_path / "spin.S"
    src.write_text(f".globl spin\nspin:\n{LOOP[arch]}")
    entry = m.load_lab_code(src)["spin"]
    with pytest.raises(BudgetExhausted) as err:
        m.call(entry)
    return str(err.value), m.reg(m.arch.ret_regs[0])


def test_runaway_code_stops_at_the_same_block_every_run(arch, tmp_path):
    first, spins = spin(arch, tmp_path, 10_000)
    assert spin(arch, tmp_path, 10_000) == (first, spins)
    assert first.startswith("instruction budget of 10,000 exhausted at 0x") and "<spin" in first
    # two instructions a round: at most one block (one round) past the budget
    assert 10_000 // 2 - 1 <= spins <= 10_000 // 2 + 1


def test_it_counts_what_a_per_block_count_counts(arch):
    """Machine.count_instructions (a Python block hook, capstone per block) is the reference: a
    budget of exactly that many instructions lets the call finish, one fewer stops it."""
    counted = Lab.open("funcs", arch)
    counted.machine.count_instructions(True)
    assert counted.call("fib", 12) == 144
    n = counted.machine.insns
    assert Lab.open("funcs", arch, budget=n).call("fib", 12) == 144
    with pytest.raises(BudgetExhausted):
        Lab.open("funcs", arch, budget=n - 1).call("fib", 12)


def test_the_lab_hooks_it_dispatches_still_run(arch):
    """hook_call's callbacks go through the budget's hook: a Python tracer still sees every call."""
    lab = Lab.open("funcs", arch)
    assert lab.machine._budget is not None and lab.machine._budget.calls  # the lab's entries are its
    seen = []
    fprobes = lab.fprobes()
    fprobes.register(Fprobe(lambda *a: seen.append(1) and 0), "fib")
    assert lab.call("fib", 10) == 55 and len(seen) == 177


def test_without_the_native_hook_unicorns_count_stops_it(arch, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(native, "LIB", None)
    monkeypatch.setattr(native, "_said", set())
    _, spins = spin(arch, tmp_path, 10_000)
    assert spins == 5_000 - 1 or spins == 5_000  # unicorn's count: to the instruction
    Machine(arches.get(arch), 10)  # said once a process
    assert capsys.readouterr().err.count("the native budget hook was not built") == 1


PINGPONG = {  # two blocks a multiple of 1024 instruction slots apart (the hook's recent table), in turn
    "x86_64": "    mov rax, rdi\n    jmp ping\n    .balign 1024\nping:\n    sub rax, 1\n    jmp pong\n"
    "    .balign 1024\npong:\n    jnz ping\n    ret\n",
    "arm64": "    mov x1, x0\n    b ping\n    .balign 4096\nping:\n    sub x1, x1, #1\n    b pong\n"
    "    .balign 4096\npong:\n    cbnz x1, ping\n    ret\n",
}


def pingpong(arch, tmp_path, budget=DEFAULT_BUDGET):
    """A machine with PINGPONG loaded: (machine, its labels)."""
    m = Machine(arches.get(arch), budget)
    src = tmp_path / "pingpong.S"
    src.write_text(f".globl pingpong\npingpong:\n{PINGPONG[arch]}")
    return m, m.load_lab_code(src)


def test_blocks_that_share_a_recent_slot_are_counted_exactly(arch, tmp_path):
    """The hook keeps the blocks entered lately direct-mapped by address: two blocks in one slot,
    taken in turn, evict each other, and the count stays the per-block count's."""
    m, labels = pingpong(arch, tmp_path)
    assert (labels["pong"] - labels["ping"]) % (1024 * m.arch.insn_align) == 0
    m.count_instructions(True)
    m.call(labels["pingpong"], 1000)
    n = m.insns
    assert n >= 3000  # three instructions a round
    m, labels = pingpong(arch, tmp_path, n)
    m.call(labels["pingpong"], 1000)
    m, labels = pingpong(arch, tmp_path, n - 1)
    with pytest.raises(BudgetExhausted):
        m.call(labels["pingpong"], 1000)


def test_a_lab_hook_added_on_a_block_already_counted_runs(arch, tmp_path):
    m, labels = pingpong(arch, tmp_path)
    m.call(labels["pingpong"], 10)  # ping and pong are among the recent blocks now
    seen = []
    m.hook_call(seen.append, labels["pong"])
    m.call(labels["pingpong"], 10)
    assert seen == [labels["pong"]] * 10


def test_a_run_inside_a_hook_has_its_own_count(arch, tmp_path):
    """As with unicorn's count=: the budget applies to each run, and the outer run's count leaves
    out the instructions of the runs its hooks made."""
    m, labels = pingpong(arch, tmp_path)
    m.count_instructions(True)
    m.call(labels["pingpong"], 100)
    outer = m.insns
    for budget, stops in ((outer, False), (outer - 1, True)):
        m, labels = pingpong(arch, tmp_path, budget)
        inside = []

        def inner(_, m=m, labels=labels, inside=inside):  # a run of pingpong(50) at each outer pong
            if not inside:
                inside.append(1)
                m.call(labels["pingpong"], 50)
                inside.pop()

        m.hook_call(inner, labels["pong"])
        if stops:
            with pytest.raises(BudgetExhausted):
                m.call(labels["pingpong"], 100)
        else:
            m.call(labels["pingpong"], 100)


def test_a_library_built_from_an_older_hook_is_not_used(monkeypatch):
    """Its functions take other arguments: the lab falls back to unicorn's count, not a crash."""
    assert native._library() is not None
    monkeypatch.setattr(native, "ABI", native.ABI + 1)
    assert native._library() is None
