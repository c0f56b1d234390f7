"""Loading relocatable ELF objects (.o, .ko) into guest memory with pyelftools.

Every SHF_ALLOC section is placed in one mapping, relocations are applied with the arch's table,
and undefined symbols are bound to the lab runtime (the ftrace entry symbols, the return thunk,
memcpy/memmove/memset), to earlier objects, or to stubs the user asked for. Anything else is an
error naming the symbol and where it is used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from .arch import by_elf_machine
from .arch.base import sign_check
from .errors import FtlabError
from .symbols import Symbol

STUB_KINDS = ("ret0", "data")  # a function returning 0, or 4 KiB of zeroed data


@dataclass
class LoadedObject:
    path: Path
    base: int
    size: int
    sections: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name -> [(addr, size)]
    functions: list[Symbol] = field(default_factory=list)
    # relocation places that refer to each undefined symbol, e.g. the __fentry__ call sites
    imports: dict[str, list[int]] = field(default_factory=dict)


def elf_arch(path: Path):
    """The Arch an ELF file is built for (FtlabError if it is not an ELF file or of an unknown machine)."""
    with _open(path) as (_, elf):
        arch = by_elf_machine(elf["e_machine"])
        if arch is None:
            raise FtlabError(f"{path}: ELF machine {elf['e_machine']} is not emulated (x86_64 and arm64 are)")
        return arch


class _open:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.file = open(self.path, "rb")
        except OSError as err:
            raise FtlabError(f"{self.path}: {err.strerror}") from None
        try:
            return self.file, ELFFile(self.file)
        except ELFError:
            self.file.close()
            raise FtlabError(f"{self.path}: not an ELF file") from None

    def __exit__(self, *exc):
        self.file.close()


def load_object(machine, path: Path, stubs=()) -> LoadedObject:
    with _open(path) as (_, elf):
        try:
            return _Loader(machine, path, elf, dict(_parse_stub(s) for s in stubs)).load()
        except ELFError as err:
            raise FtlabError(f"{path}: malformed ELF: {err}") from None


def _parse_stub(spec: str) -> tuple[str, str]:
    name, _, kind = spec.partition("=")
    kind = kind or "ret0"
    if kind not in STUB_KINDS or not name:
        raise FtlabError(f"bad stub '{spec}': use NAME (a function returning 0) or NAME=data")
    return name, kind


class _Loader:
    def __init__(self, machine, path, elf, stubs):
        self.m, self.path, self.elf, self.stubs = machine, path, elf, stubs
        self.arch = machine.arch

    def load(self) -> LoadedObject:
        arch, elf = self.arch, self.elf
        if elf["e_machine"] != arch.elf_machine:
            other = by_elf_machine(elf["e_machine"])
            raise FtlabError(f"{self.path}: built for {other.name if other else elf['e_machine']}, not {arch.name}")
        if elf["e_type"] != "ET_REL":
            raise FtlabError(f"{self.path}: {elf['e_type']} file; only relocatable objects (.o, .ko) load")
        placed = self._layout()
        obj = LoadedObject(self.path, self.base, self.size)
        for index, addr in placed.items():
            sec = elf.get_section(index)
            obj.sections.setdefault(sec.name, []).append((addr, sec["sh_size"]))
            if sec["sh_type"] != "SHT_NOBITS":
                self.m.write(addr, sec.data())  # fresh memory: nothing translated from it yet
            if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                self.m.mark_executable(addr, sec["sh_size"])
        self.placed = placed
        self.symtab = next((s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)), None)
        self.values = self._symbols(obj)
        self._relocate(obj)
        self.m.write_code(self.base, self.m.read(self.base, self.size))  # one cache flush for it all
        return obj

    def _layout(self) -> dict[int, int]:
        """Address of each SHF_ALLOC section, text first, each at its own alignment."""
        secs = [
            (i, s)
            for i, s in enumerate(self.elf.iter_sections())
            if s["sh_flags"] & SH_FLAGS.SHF_ALLOC and s["sh_size"]
        ]
        secs.sort(key=lambda item: not item[1]["sh_flags"] & SH_FLAGS.SHF_EXECINSTR)
        offsets, end = {}, 0
        for i, s in secs:
            align = max(s["sh_addralign"], 1)
            end = -(-end // align) * align
            offsets[i] = end
            end += s["sh_size"]
        self.common = end = -(-end // 16) * 16
        end += sum(-(-sym["st_size"] // 16) * 16 for sym in self._commons())
        self.base, self.size = self.m.map_object(end), end
        return {i: self.base + off for i, off in offsets.items()}

    def _commons(self):
        symtab = next((s for s in self.elf.iter_sections() if isinstance(s, SymbolTableSection)), None)
        return [sym for sym in (symtab.iter_symbols() if symtab else ()) if sym["st_shndx"] == "SHN_COMMON"]

    def _symbols(self, obj: LoadedObject) -> list[int | None]:
        """Every symbol's address (None: undefined, bound later); defines functions and objects."""
        values: list[int | None] = []
        common = self.base + self.common
        for sym in self.symtab.iter_symbols() if self.symtab else ():
            shndx, kind = sym["st_shndx"], sym["st_info"]["type"]
            if shndx == "SHN_UNDEF":
                values.append(None)
                continue
            if shndx == "SHN_ABS":
                values.append(sym["st_value"])
                continue
            if shndx == "SHN_COMMON":
                addr, common = common, common + -(-sym["st_size"] // 16) * 16
            elif shndx in self.placed:
                addr = self.placed[shndx] + sym["st_value"]
            else:
                values.append(None if kind == "STT_SECTION" else 0)  # a section we did not load
                continue
            values.append(addr)
            if kind in ("STT_FUNC", "STT_OBJECT") and sym.name:
                symbol = Symbol(sym.name, addr, sym["st_size"], "func" if kind == "STT_FUNC" else "object")
                self.m.symbols.add(symbol)
                if kind == "STT_FUNC":
                    obj.functions.append(symbol)
        return values

    def _resolve(self, name: str, where: str) -> int:
        sym = self.m.symbols.get(name)
        if sym is not None:
            return sym.addr
        kind = self.stubs.get(name)
        if kind is None:
            raise FtlabError(
                f"{self.path}: undefined symbol '{name}' (used at {where}); "
                f"supply it with --stub {name} or --stub {name}=data"
            )
        addr = self.m.alloc("lab data", 4096, 16) if kind == "data" else self.m.symbols.get("ftlab_ret0").addr
        self.m.symbols.add(Symbol(name, addr, 4096 if kind == "data" else 0, "lab"))
        return addr

    def _relocate(self, obj: LoadedObject) -> None:
        syms = list(self.symtab.iter_symbols()) if self.symtab else []
        for sec in self.elf.iter_sections():
            if sec["sh_type"] not in ("SHT_RELA", "SHT_REL") or sec["sh_info"] not in self.placed:
                continue
            target = self.elf.get_section(sec["sh_info"])
            if sec["sh_type"] == "SHT_REL":
                raise FtlabError(
                    f"{self.path}: {sec.name}: REL relocations are not used on {self.arch.name}; only RELA is supported"
                )
            base = self.placed[sec["sh_info"]]
            for rel in sec.iter_relocations():
                place, kind = base + rel["r_offset"], rel["r_info_type"]
                where = f"{target.name}+{rel['r_offset']:#x}"
                sym = syms[rel["r_info_sym"]]
                value = self.values[rel["r_info_sym"]]
                if value is None and sym["st_info"]["type"] == "STT_SECTION":
                    continue  # against a section we did not load
                if value is None:
                    value = self._resolve(sym.name, f"{self.m.symbols.name(place)} ({where})")
                    obj.imports.setdefault(sym.name, []).append(place)
                self._apply(kind, value, rel["r_addend"], place, where)

    def _apply(self, kind: int, S: int, A: int, P: int, where: str) -> None:
        reloc = self.arch.relocs.get(kind)
        if reloc is None:
            raise FtlabError(f"{self.path}: relocation type {kind} at {where} is not supported on {self.arch.name}")
        value = reloc.value(S, A, P)
        if reloc.bits and not sign_check(value, *reloc.bits):
            raise FtlabError(f"{self.path}: {reloc.name} at {where}: value {value:#x} out of range")
        fmt = "<Q" if reloc.size == 8 else "<I"
        mask = (1 << (8 * reloc.size)) - 1
        if reloc.store is None:
            new = value & mask
        else:
            new = reloc.store(struct.unpack(fmt, self.m.read(P, reloc.size))[0], value) & mask
        self.m.write(P, struct.pack(fmt, new))
