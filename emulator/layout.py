"""Structs and words that guest code and Python share, declared once: each table feeds both
Python's accessors and the assembly's constants (what asm-offsets.c gives the kernel)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from operator import itemgetter

from .errors import FtlabError


@dataclass(frozen=True, eq=False)  # one object per struct per arch, hashed by identity
class Layout:
    """A struct made only of u64 slots, as an offset table."""

    name: str
    size: int
    offsets: dict[str, int]
    codec: struct.Struct = field(init=False, repr=False)

    def __post_init__(self):
        # all slots at once, for one bulk read of the struct
        object.__setattr__(self, "codec", struct.Struct(f"<{self.size // 8}Q"))

    @classmethod
    def of(cls, name: str, slots) -> Layout:
        """Consecutive u64 slots, in order."""
        return cls(name, 0, {}).extend(name, slots)

    def extend(self, name: str, slots) -> Layout:
        """A struct that begins with this one and goes on with more u64 slots."""
        offsets = dict(self.offsets)
        for i, slot in enumerate(slots):
            if slot in offsets:
                raise FtlabError(f"{name}: slot '{slot}' is declared twice")
            offsets[slot] = self.size + 8 * i
        return Layout(name, self.size + 8 * (len(offsets) - len(self.offsets)), offsets)

    @property
    def nr_words(self) -> int:
        return self.size // 8

    def index(self, name: str) -> int:
        """The slot's index among the struct's words (in a u64 view, or the codec's tuple)."""
        return self.offsets[name] // 8

    def getter(self, *names: str):
        """Reads these slots by name from a u64 view or the codec's tuple: a value, or a tuple."""
        return itemgetter(*(self.index(n) for n in names))

    def asm_constants(self, prefix: str) -> dict[str, int]:
        """`PREFIX_FIELD` names for the assembly sources, like the kernel's asm-offsets."""
        consts = {f"{prefix}{name.upper()}": off for name, off in self.offsets.items()}
        consts[f"{prefix}SIZE"] = self.size
        return consts


@dataclass(frozen=True, eq=False)
class Bits:
    """A u64 split into named bit fields, packed from bit 0 up: their widths, lowest first."""

    name: str
    widths: dict[str, int]
    shifts: dict[str, int] = field(init=False)

    def __post_init__(self):
        shifts, at = {}, 0
        for name, width in self.widths.items():
            shifts[name], at = at, at + width
        if at > 64:
            raise FtlabError(f"{self.name}: {at} bits do not fit in a u64")
        object.__setattr__(self, "shifts", shifts)

    def extend(self, name: str, widths: dict[str, int]) -> Bits:
        """A word with this one's fields and more above them."""
        if set(widths) & set(self.widths):
            raise FtlabError(f"{name}: a field is declared twice")
        return Bits(name, {**self.widths, **widths})

    def shift(self, name: str) -> int:
        return self.shifts[name]

    def mask(self, name: str) -> int:
        """The field's mask before shifting, as the kernel's FOO_MASK."""
        return (1 << self.widths[name]) - 1

    def asm_constants(self, prefix: str) -> dict[str, int]:
        """`PREFIX_FIELD_SHIFT` and `PREFIX_FIELD_MASK` for each field."""
        consts = {}
        for name in self.widths:
            consts[f"{prefix}{name.upper()}_SHIFT"] = self.shift(name)
            consts[f"{prefix}{name.upper()}_MASK"] = self.mask(name)
        return consts
