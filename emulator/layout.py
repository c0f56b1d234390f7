"""Structs that guest code and Python share, declared once: the offset table feeds both Python's
`struct` codec and the assembly's constants (what asm-offsets.c gives the kernel)."""
from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True, eq=False)          # one object per struct per arch, hashed by identity
class Layout:
    """A struct made only of u64 slots, as an offset table."""

    name: str
    size: int
    offsets: dict[str, int]

    def __post_init__(self):
        # all slots at once, for one bulk read of the struct
        object.__setattr__(self, "codec", struct.Struct(f"<{self.size // 8}Q"))

    def get(self, words: tuple[int, ...], name: str) -> int:
        return words[self.offsets[name] // 8]

    def asm_constants(self, prefix: str) -> dict[str, int]:
        """`PREFIX_FIELD` names for the assembly sources, like the kernel's asm-offsets."""
        consts = {f"{prefix}{name.upper()}": off for name, off in self.offsets.items()}
        consts[f"{prefix}SIZE"] = self.size
        return consts
