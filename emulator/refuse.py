"""Instructions the emulated CPU would run wrongly are refused before they run: the call ends in one
guest fault naming the instruction, never in a silent wrong result.

Which instructions, and why, is the arch's decision (`Arch.refused`, from an instruction's bytes);
this module finds them in loaded code and stops the guest there. The text is never altered (ftrace
verifies and prints it).

At load, each function of the object is decoded linearly from its symbol to the next function (or
its section's end), so padding between functions is decoded too and each function start resyncs the
decoding. A byte capstone cannot decode is skipped by one instruction alignment unit: if it runs, it
faults as an invalid instruction in Unicorn too. A code span holding a refused instruction gets a
block hook over that span, nothing else does: an object without one costs nothing. The hook fires
before a translated block runs, decodes that block (its decoding is exact: the block starts where
execution really is) and refuses the first refused instruction in it, before any of it runs. It is
a block hook and not a code hook per instruction because every code hook slows every instruction
under the budget (docs/unicorn.md, "Hooks, the instruction budget and counting").
"""

from __future__ import annotations

import itertools

import unicorn

from . import asm
from .elf import LoadedObject
from .errors import GuestFault


def guard(machine, obj: LoadedObject) -> None:
    """Refuse the arch's refused instructions in obj's code, when they are about to run."""
    refused = machine.arch.refused
    if refused is None:
        return
    for begin, end in _spans(obj):
        if any(refused(code) for _, code in _decode(machine, begin, end)):
            machine.uc.hook_add(unicorn.UC_HOOK_BLOCK, _Refusal(machine, refused), begin=begin, end=end - 1)
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


def _decode(machine, begin: int, end: int):
    """(address, bytes) of each instruction decoded linearly in [begin, end)."""
    code, offset, step = machine.read(begin, end - begin), 0, machine.arch.insn_align
    while offset < len(code):
        insn = asm.decode(machine.arch, code[offset : offset + 16], begin + offset)
        size = insn.size if insn is not None else step
        if insn is not None:
            yield begin + offset, bytes(insn.bytes)
        offset += size


class _Refusal:
    """The block hook: the first refused instruction of a block about to run, as a guest fault."""

    def __init__(self, machine, refused):
        self.machine, self.refused = machine, refused
        self.blocks: dict[tuple[int, int], tuple[int, str] | None] = {}  # (addr, size) -> (where, why)

    def __call__(self, uc, addr: int, size: int, _) -> None:
        key = (addr, size)
        if key not in self.blocks:
            found = ((at, self.refused(code)) for at, code in _decode(self.machine, addr, addr + size))
            self.blocks[key] = next(((at, why) for at, why in found if why), None)
        hit = self.blocks[key]
        if hit is not None:
            at, why = hit
            m = self.machine
            raise GuestFault(f"guest fault: refused {m.disasm(at)} at {at:#x} <{m.symbols.name(at)}>: {why}")
