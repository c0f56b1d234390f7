"""Symbols of everything in guest memory: the lab's own code and the loaded objects."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    addr: int
    size: int
    kind: str  # 'func', 'object' or 'lab' (the lab's own code and data)
    section: str = ""  # an object's symbol: its ELF section (COMMON for a common one); a stub: how it was asked for

    def describe(self) -> str:
        """What the symbol is when it cannot be called: `a data object (STT_OBJECT in .bss), not
        a function`."""
        if self.kind == "object":
            return f"a data object (STT_OBJECT in {self.section}), not a function"
        if self.kind == "func":
            return f"STT_FUNC but in {self.section}, a section that is not executable"
        if self.section.startswith("--stub"):
            return f"a data stub ({self.section}), not a function"
        return "lab data, not a function"


class SymbolTable:
    def __init__(self):
        self._by_name: dict[str, Symbol] = {}
        self._starts: list[int] = []
        self._sorted: list[Symbol] = []
        # global definitions of objects: name -> (symbol, owner, weak)
        self._exports: dict[str, tuple[Symbol, str, bool]] = {}

    def export(self, sym: Symbol, owner: str, weak: bool = False) -> str | None:
        """Make an object's global (or weak) definition visible to the objects loaded after it.
        Returns the owner of an earlier global definition of the name: a clash. A weak definition
        clashes with nothing, and a global one replaces it for the objects loaded later."""
        earlier = self._exports.get(sym.name)
        if earlier is None or (earlier[2] and not weak):
            self._exports[sym.name] = (sym, owner, weak)
            return None
        return None if weak or earlier[2] else earlier[1]

    def resolve(self, name: str) -> Symbol | None:
        """What an undefined symbol binds to: an earlier object's global definition, else the lab's
        own (runtime, stubs); never an object's local (static) symbol."""
        exported = self._exports.get(name)
        if exported is not None:
            return exported[0]
        sym = self._by_name.get(name)
        return sym if sym is not None and sym.kind == "lab" else None

    def add(self, sym: Symbol) -> None:
        self._by_name.setdefault(sym.name, sym)
        i = bisect.bisect_left(self._starts, sym.addr)  # aliases: lookup() finds the first added
        self._starts.insert(i, sym.addr)
        self._sorted.insert(i, sym)

    def get(self, name: str) -> Symbol | None:
        return self._by_name.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def next_start(self, addr: int, limit: int) -> int:
        """Where the first symbol after addr starts, or limit if none does before it."""
        i = bisect.bisect_right(self._starts, addr)
        return min(self._starts[i], limit) if i < len(self._starts) else limit

    def lookup(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol containing addr (a zero-sized one counts only for its own address)."""
        i = bisect.bisect_right(self._starts, addr)
        while i > 0:
            sym = self._sorted[i - 1]
            off = addr - sym.addr
            if off < sym.size or off == 0:
                return sym, off
            if sym.size:
                return None
            i -= 1
        return None

    def is_function_start(self, addr: int) -> bool:
        i = bisect.bisect_left(self._starts, addr)
        return (
            i < len(self._starts)
            and self._starts[i] == addr
            and any(s.addr == addr and s.kind == "func" for s in self._sorted[i : i + 4])
        )

    def name(self, addr: int) -> str:
        """`sym`, `sym+0x10`, or the bare address: for messages and trace output."""
        hit = self.lookup(addr)
        if hit is None:
            return f"{addr:#x}"
        sym, off = hit
        return f"{sym.name}+{off:#x}" if off else sym.name

    def __iter__(self):
        """Every symbol, by address."""
        return iter(self._sorted)

    def functions(self) -> list[Symbol]:
        return [s for s in self._sorted if s.kind == "func"]
