"""Instructions the emulated CPU would run wrongly are refused before they run: the call ends in one
guest fault naming the instruction, never in a silent wrong result.

Which instructions, and why, is the arch's decision (`Arch.refused`, from an instruction's bytes);
this module finds them in loaded code and stops the guest there. The text is never altered (ftrace
verifies and prints it).

At load, each function of the object is decoded linearly from its symbol to the next function (or
its section's end), so padding between functions is decoded too and each function start resyncs the
decoding. A byte capstone cannot decode is skipped by one instruction alignment unit: if it runs, it
faults as an invalid instruction in Unicorn too. A code span holding a refused instruction gets one
block hook over that span, nothing else does: an object without one costs nothing. The hook fires
before a translated block runs and refuses the first refused instruction inside the block, before
any of the block runs. (A block that falls through from the code before a function symbol into a
refused instruction is not seen: compilers end functions with a branch.) It is a block hook and not
a code hook per instruction because every code hook slows every instruction under the budget
(docs/unicorn.md, "Hooks, the instruction budget and counting").
"""

from __future__ import annotations

import bisect
import itertools
from functools import cache

import capstone
import unicorn

from .elf import LoadedObject
from .errors import GuestFault


def guard(machine, obj: LoadedObject) -> None:
    """Refuse the arch's refused instructions in obj's code, when they are about to run."""
    refused = machine.arch.refused
    if refused is None:
        return
    for begin, end in _spans(obj):
        found = {addr: why for addr, code in _decode(machine, begin, end) if (why := refused(code))}
        if found:
            machine.uc.hook_add(unicorn.UC_HOOK_BLOCK, _Refusal(machine, found), begin=begin, end=end - 1)
            machine.uc.ctl_remove_cache(begin, end)


def _spans(obj: LoadedObject) -> list[tuple[int, int]]:
    """[begin, end) of the code from each function symbol to the next one or its section's end,
    over the sections that hold the object's functions."""
    spans: list[tuple[int, int]] = []
    for name in sorted({f.section for f in obj.functions}):
        for base, size in obj.sections.get(name, ()):
            cuts = {base, base + size}
            cuts |= {p for f in obj.functions for p in (f.addr, f.addr + f.size) if base < p < base + size}
            spans += itertools.pairwise(sorted(cuts))
    return spans


@cache
def _capstone(arch_id: tuple[int, int]) -> capstone.Cs:
    return capstone.Cs(*arch_id)


def _decode(machine, begin: int, end: int):
    """(address, bytes) of each instruction decoded linearly in [begin, end) (capstone without
    details: about 1 µs an instruction)."""
    code, offset, step = machine.read(begin, end - begin), 0, machine.arch.insn_align
    cs = _capstone(machine.arch.cs)
    while offset < len(code):
        for _, size, _, _ in cs.disasm_lite(code[offset:], begin + offset):
            yield begin + offset, code[offset : offset + size]
            offset += size
        if offset < len(code):  # capstone stopped at bytes it cannot decode
            offset += step


class _Refusal:
    """The block hook: the first refused instruction of a block about to run, as a guest fault.
    The addresses are the ones found at load, so a kprobe's int3 over one's first byte does not
    hide it (the kprobe would run the original instruction out of line)."""

    def __init__(self, machine, found: dict[int, str]):
        self.machine = machine
        self.texts = {
            addr: f"{machine.disasm(addr)} at {addr:#x} <{machine.symbols.name(addr)}>: {why}"
            for addr, why in found.items()
        }
        self.addrs = sorted(found)

    def __call__(self, uc, addr: int, size: int, _) -> None:
        i = bisect.bisect_left(self.addrs, addr)
        if i < len(self.addrs) and self.addrs[i] < addr + size:
            raise GuestFault(f"guest fault: refused {self.texts[self.addrs[i]]}")
