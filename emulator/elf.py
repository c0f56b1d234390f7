"""Loading relocatable ELF objects (.o, .ko) into guest memory with pyelftools.

Every SHF_ALLOC section is placed in one mapping, relocations are applied with the arch's table,
and undefined symbols are bound to the global definitions of objects loaded earlier (as insmod
binds a module to its dependencies' exports; two globals of one name are refused), to the lab
runtime (the ftrace entry symbols, memcpy/memmove/memset, and lib.S: the kernel's string functions,
libgcc's helpers, the retpoline thunks, printk), or to stubs the user asked for. Every other
undefined symbol is named in one error, with where it is first used.

What loads is checked at the edge (`_check`), from the raw bytes before pyelftools parses a
structure: a regular file, the ELF magic, ELFCLASS64, ELFDATA2LSB, a machine the lab emulates,
ET_REL, and every section, string, symbol and relocation within the file and its section.
Anything else is refused in one line naming the file and the section, offset or symbol.
"""

from __future__ import annotations

import bisect
import io
import os
import stat
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import capstone
from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE, ENUM_RELOC_TYPE_AARCH64, ENUM_RELOC_TYPE_x64
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from . import asm
from .arch import ARCHES, Arch
from .arch.base import sign_check
from .errors import FtlabError
from .symbols import Symbol

STUB_KINDS = ("ret0", "data")  # a function returning 0, or 4 KiB of zeroed data
STUB_ALL = "*"  # --stub '*': every undefined symbol nothing else supplies, each stubbed as its use says
DATA_STUB_SIZE = 4096
MAX_OBJECT = 64 << 20  # the most guest memory one object's sections and common symbols may take
MAX_FILE = 1 << 30  # a bigger file is refused before it is read

# The gABI's layouts and numbers: the checks read the raw bytes, before pyelftools does.
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA, REL = struct.Struct("<QQq"), struct.Struct("<QQ")
ELFCLASS = {1: "ELFCLASS32 (32-bit)", 2: "ELFCLASS64"}
ELFDATA = {1: "ELFDATA2LSB (little-endian)", 2: "ELFDATA2MSB (big-endian)"}
ET_REL = 1
ET_NAMES = {
    0: "ET_NONE",
    2: "ET_EXEC (an executable)",
    3: "ET_DYN (a shared object or PIE)",
    4: "ET_CORE (a core dump)",
}
SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 2, 3, 4, 8, 9, 11
SHF_ALLOC, SHF_COMPRESSED = 0x2, 0x800
SHN_LORESERVE, SHN_ABS, SHN_COMMON, SHN_XINDEX = 0xFF00, 0xFFF1, 0xFFF2, 0xFFFF
STT_OBJECT, STT_FUNC = 1, 2
MACHINES = {ENUM_E_MACHINE[a.elf_machine]: a for a in ARCHES.values()}
RELOC_NAMES = {  # for messages: the type numbers of the arches' relocations, named
    machine: {number: name for name, number in enum.items() if isinstance(number, int)}
    for machine, enum in (("EM_X86_64", ENUM_RELOC_TYPE_x64), ("EM_AARCH64", ENUM_RELOC_TYPE_AARCH64))
}
RELOC_NAMES["EM_X86_64"][41] = "R_X86_64_GOTPCRELX"  # pyelftools 0.31 has no name for it
MACHINE_NAMES = {number: name for name, number in ENUM_E_MACHINE.items() if isinstance(number, int)}


@dataclass
class LoadedObject:
    path: Path
    base: int
    size: int
    sections: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # name -> [(addr, size)]
    functions: list[Symbol] = field(default_factory=list)
    # relocation places that refer to each undefined symbol, e.g. the __fentry__ call sites
    imports: dict[str, list[int]] = field(default_factory=dict)
    text: list[tuple[int, int]] = field(default_factory=list)  # the executable sections: [(addr, size)]


class _Sym(NamedTuple):
    name: str
    value: int
    size: int
    type: str  # STT_*
    bind: str  # STB_*
    shndx: int | str  # a section index or SHN_*


class _Rel(NamedTuple):
    offset: int
    type: int
    sym: int
    addend: int


@dataclass(frozen=True)
class _RelSection:
    name: str
    kind: str  # SHT_RELA or SHT_REL
    target: int  # the index of the section it relocates
    target_name: str
    code: bool  # whether that section is executable
    rels: tuple[_Rel, ...]


@dataclass(frozen=True)
class _Tables:
    """An object's symbols and relocations, parsed once: `check` loads one object once per
    mechanism, and a module's 80,000 relocations take seconds to parse."""

    symbols: tuple[_Sym, ...]
    relocations: tuple[_RelSection, ...]


@lru_cache(maxsize=2)
def _tables(data: bytes) -> _Tables:
    elf = ELFFile(io.BytesIO(data))
    symtab = next((s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)), None)
    symbols = tuple(
        _Sym(sym.name, sym["st_value"], sym["st_size"], sym["st_info"]["type"], sym["st_info"]["bind"], sym["st_shndx"])
        for sym in (symtab.iter_symbols() if symtab else ())
    )
    sections = []
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection):
            continue
        target = elf.get_section(sec["sh_info"])
        rels = (
            tuple(
                _Rel(rel["r_offset"], rel["r_info_type"], rel["r_info_sym"], rel["r_addend"])
                for rel in sec.iter_relocations()
            )
            if sec["sh_type"] == "SHT_RELA"
            else ()
        )
        code = bool(target["sh_flags"] & SH_FLAGS.SHF_EXECINSTR)
        sections.append(_RelSection(sec.name, sec["sh_type"], sec["sh_info"], target.name, code, rels))
    return _Tables(symbols, tuple(sections))


def elf_arch(path: Path) -> Arch:
    """The Arch an object is built for (FtlabError if it is not an object the lab loads)."""
    return _read(path)[0]


def load_object(machine, path: Path, stubs=()) -> LoadedObject:
    arch, data = _read(path)
    if arch is not machine.arch:
        raise FtlabError(f"{path}: built for {arch.name}, not {machine.arch.name}")
    stub_kinds = dict(_parse_stub(s) for s in stubs)
    try:
        return _Loader(machine, path, ELFFile(io.BytesIO(data)), _tables(data), stub_kinds).load()
    except (ELFError, struct.error, UnicodeDecodeError) as err:  # the last guard: _check ran first
        raise FtlabError(f"{path}: malformed ELF: {err}") from None


def _read(path: Path) -> tuple[Arch, bytes]:
    """The bytes of a regular file, checked (_check), and its arch. A FIFO, a directory or a
    device is refused before it is opened for reading: reading a FIFO with no writer would hang."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise FtlabError(f"{path}: {_file_kind(st.st_mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a file swapped for a FIFO meanwhile still cannot block
        with open(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FtlabError(f"{path}: {_file_kind(st.st_mode)}, not a regular file")
            if st.st_size > MAX_FILE:
                raise FtlabError(f"{path}: {st.st_size:,} bytes; an object larger than {MAX_FILE:,} is refused")
            data = fh.read(MAX_FILE + 1)
    except OSError as err:
        raise FtlabError(f"{path}: {err.strerror}") from None
    except ValueError as err:  # a NUL in the path
        raise FtlabError(f"{path!r}: {err}") from None
    return _check(path, data), data


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def _machine_name(number: int) -> str:
    name = MACHINE_NAMES.get(number)
    return f"{name} ({number})" if name else f"e_machine {number}"


def _check(path: Path, data: bytes) -> Arch:
    """Refuse anything but a little-endian ELF64 relocatable object for an emulated machine whose
    every section, string, symbol and relocation lies within the file and its section."""
    if len(data) < 4 or data[:4] != b"\x7fELF":
        raise FtlabError(f"{path}: not an ELF file")
    if len(data) < 20:
        raise FtlabError(f"{path}: truncated ELF header ({len(data)} bytes)")
    ei_class, ei_data = data[4], data[5]
    machine = int.from_bytes(data[18:20], "big" if ei_data == 2 else "little")
    what = _machine_name(machine)
    if ei_class != 2:
        kind = ELFCLASS.get(ei_class, f"EI_CLASS {ei_class}")
        raise FtlabError(f"{path}: {kind} object for {what}; the lab loads ELFCLASS64 objects only")
    if ei_data != 1:
        kind = ELFDATA.get(ei_data, f"EI_DATA {ei_data}")
        raise FtlabError(f"{path}: {kind} object for {what}; the lab loads little-endian (ELFDATA2LSB) objects only")
    if len(data) < EHDR.size:
        raise FtlabError(f"{path}: truncated ELF header ({len(data)} of {EHDR.size} bytes)")
    _, e_type, _, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx = EHDR.unpack_from(data)
    arch = MACHINES.get(machine)
    if arch is None:
        raise FtlabError(f"{path}: ELF machine {what} is not emulated (x86_64 and arm64 are)")
    if e_type != ET_REL:
        kind = ET_NAMES.get(e_type, f"e_type {e_type:#x}")
        raise FtlabError(f"{path}: {kind} file; only relocatable objects (ET_REL: .o, .ko) load")
    return _Checker(path, data, arch, shoff, shentsize, shnum, shstrndx).run()


class _Checker:
    """The section table and everything it points at, from the raw bytes."""

    def __init__(self, path, data, arch, shoff, shentsize, shnum, shstrndx):
        self.path, self.data, self.arch = path, data, arch
        self.shoff, self.shentsize, self.shnum, self.shstrndx = shoff, shentsize, shnum, shstrndx

    def fail(self, what: str):
        raise FtlabError(f"{self.path}: {what}")

    def run(self) -> Arch:
        size = len(self.data)
        if self.shoff == 0:
            self.fail("no section header table (e_shoff is 0)")
        if self.shentsize != SHDR.size:
            self.fail(f"e_shentsize {self.shentsize}, not {SHDR.size}")
        if self.shoff + SHDR.size > size:
            self.fail(f"section header table at {self.shoff:#x} is past the end of the file ({size:#x} bytes)")
        first = SHDR.unpack_from(self.data, self.shoff)
        shnum = self.shnum or first[5]  # e_shnum 0: the count is section 0's sh_size
        shstrndx = first[6] if self.shstrndx == SHN_XINDEX else self.shstrndx
        if self.shoff + shnum * SHDR.size > size:
            self.fail(
                f"section header table at {self.shoff:#x} ({shnum} entries) "
                f"runs past the end of the file ({size:#x} bytes)"
            )
        self.secs = [SHDR.unpack_from(self.data, self.shoff + i * SHDR.size) for i in range(shnum)]
        if shstrndx >= shnum:
            self.fail(f"e_shstrndx {shstrndx} is not a section (there are {shnum})")
        self.names = [""] * shnum
        if shstrndx:
            self.section(shstrndx, self.secs[shstrndx])
            self.names = [self.string(shstrndx, sec[0], f"section [{i}]'s name") for i, sec in enumerate(self.secs)]
        for i, sec in enumerate(self.secs):
            self.section(i, sec)
        symtabs = [i for i, sec in enumerate(self.secs) if sec[1] == SHT_SYMTAB]
        if len(symtabs) > 1:
            listed = ", ".join(map(str, symtabs))
            self.fail(f"{len(symtabs)} symbol tables (sections {listed}); a relocatable object has one")
        self.nsyms = 0
        for i in symtabs:
            self.symbols(i)
        for i, sec in enumerate(self.secs):
            if sec[1] in (SHT_RELA, SHT_REL):
                self.relocations(i, sec, symtabs)
        return self.arch

    def where(self, i: int) -> str:
        return f"section [{i}] {self.names[i]}".rstrip()

    def section(self, i: int, sec) -> None:
        _, sh_type, flags, _, offset, size, link, _, _, _ = sec
        if i == 0:
            return  # SHN_UNDEF: its fields may carry the extended counts
        if sh_type != SHT_NOBITS and offset + size > len(self.data):
            self.fail(
                f"{self.where(i)}: offset {offset:#x} + size {size:#x} runs past the end of the file "
                f"({len(self.data):#x} bytes)"
            )
        if flags & SHF_ALLOC and flags & SHF_COMPRESSED:
            self.fail(f"{self.where(i)}: SHF_COMPRESSED on an SHF_ALLOC section")
        if sh_type in (SHT_SYMTAB, SHT_DYNSYM, SHT_RELA, SHT_REL) and not 0 < link < len(self.secs):
            self.fail(f"{self.where(i)}: sh_link {link} is not a section")
        if sh_type == SHT_STRTAB and size and self.data[offset + size - 1] != 0:
            self.fail(f"{self.where(i)}: string table does not end in a NUL")

    def string(self, strtab: int, offset: int, what: str) -> str:
        sec = self.secs[strtab]
        if sec[1] != SHT_STRTAB:
            self.fail(f"{what}: section [{strtab}] is not a string table")
        if offset >= sec[5]:
            self.fail(f"{what}: offset {offset:#x} is past the end of string table [{strtab}] ({sec[5]:#x} bytes)")
        start = sec[4] + offset
        return self.data[start : self.data.index(b"\0", start)].decode("utf-8", "replace")

    def table(self, i: int, sec, entry: struct.Struct) -> int:
        if sec[9] != entry.size or sec[5] % entry.size:
            self.fail(f"{self.where(i)}: entry size {sec[9]} and size {sec[5]:#x}; expected {entry.size}-byte entries")
        return sec[5] // entry.size

    def symbols(self, i: int) -> None:
        sec = self.secs[i]
        self.nsyms = count = self.table(i, sec, SYM)
        link, offset = sec[6], sec[4]
        for n in range(count):
            st_name, info, _, shndx, value, size = SYM.unpack_from(self.data, offset + n * SYM.size)
            name = self.string(link, st_name, f"symbol {n}'s name") if st_name else f"symbol {n}"
            where = f"symbol '{name}' ({self.where(i)} entry {n})"
            if shndx == SHN_XINDEX:
                self.fail(f"{where}: extended section indexes (SHN_XINDEX) are not supported")
            if shndx in (0, SHN_ABS, SHN_COMMON):
                continue
            if shndx >= SHN_LORESERVE or shndx >= len(self.secs):
                self.fail(f"{where}: section index {shndx:#x} is not a section")
            extent = size if info & 0xF in (STT_OBJECT, STT_FUNC) else 0
            if value + extent > self.secs[shndx][5]:
                limit = self.secs[shndx][5]
                outside = f"{self.where(shndx)} ({limit:#x} bytes)"
                self.fail(f"{where}: value {value:#x} + size {extent:#x} is outside {outside}")

    def relocations(self, i: int, sec, symtabs: list[int]) -> None:
        rela = sec[1] == SHT_RELA
        count = self.table(i, sec, RELA if rela else REL)
        link, target = sec[6], sec[7]
        if link not in symtabs:
            self.fail(f"{self.where(i)}: sh_link {link} is not the symbol table")
        if not 0 < target < len(self.secs):
            self.fail(f"{self.where(i)}: sh_info {target} is not a section")
        limit, applied = self.secs[target][5], self.secs[target][2] & SHF_ALLOC and self.secs[target][5]
        entry = RELA if rela else REL
        for n in range(count):
            r_offset, info = entry.unpack_from(self.data, sec[4] + n * entry.size)[:2]
            kind, sym = info & 0xFFFFFFFF, info >> 32
            where = f"{self.where(i)} entry {n} ({self.names[target] or f'[{target}]'}+{r_offset:#x})"
            reloc = self.arch.relocs.get(kind)
            if reloc is None and applied:
                name = RELOC_NAMES[self.arch.elf_machine].get(kind, "unknown")
                hint = self.arch.reloc_hints.get(kind)
                self.fail(
                    f"{where}: relocation type {kind} ({name}) is not supported on {self.arch.name}"
                    + (f": {hint}" if hint else "")
                )
            if sym >= self.nsyms:
                self.fail(f"{where}: symbol index {sym} is past the symbol table ({self.nsyms} symbols)")
            if r_offset + (reloc.size if reloc else 1) > limit:
                self.fail(f"{where}: offset {r_offset:#x} is outside {self.where(target)} ({limit:#x} bytes)")


def _parse_stub(spec: str) -> tuple[str, str]:
    name, _, kind = spec.partition("=")
    kind = kind or "ret0"
    if kind not in STUB_KINDS or not name:
        raise FtlabError(f"bad stub '{spec}': use NAME (a function returning 0) or NAME=data")
    return name, kind


class _Loader:
    def __init__(self, machine, path, elf, tables: _Tables, stubs):
        self.m, self.path, self.elf, self.tables, self.stubs = machine, path, elf, tables, stubs
        self.arch = machine.arch
        self.walks: dict[int, list[int]] = {}  # instruction starts decoded from an address, for _use

    def load(self) -> LoadedObject:
        elf = self.elf
        placed = self._layout()
        obj = LoadedObject(self.path, self.base, self.size)
        for index, addr in placed.items():
            sec = elf.get_section(index)
            obj.sections.setdefault(sec.name, []).append((addr, sec["sh_size"]))
            if sec["sh_type"] != "SHT_NOBITS":
                self.m.write(addr, sec.data())  # fresh memory: nothing translated from it yet
            if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                self.m.mark_executable(addr, sec["sh_size"])
                obj.text.append((addr, sec["sh_size"]))
        self.placed = placed
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
            if end > MAX_OBJECT:
                raise FtlabError(
                    f"{self.path}: section [{i}] {s.name} (size {s['sh_size']:#x}, alignment {align:#x}) "
                    f"ends {end:#x} bytes in; an object may take {MAX_OBJECT:#x}"
                )
        self.common = end = -(-end // 16) * 16
        end += sum(-(-sym.size // 16) * 16 for sym in self._commons())
        if end > MAX_OBJECT:
            raise FtlabError(f"{self.path}: common symbols take the object to {end:#x} bytes, over {MAX_OBJECT:#x}")
        self.base, self.size = self.m.map_object(end), end
        return {i: self.base + off for i, off in offsets.items()}

    def _commons(self) -> list[_Sym]:
        return [sym for sym in self.tables.symbols if sym.shndx == "SHN_COMMON"]

    def _symbols(self, obj: LoadedObject) -> list[int | None]:
        """Every symbol's address (None: undefined, bound later); defines functions and objects."""
        values: list[int | None] = []
        common = self.base + self.common
        for sym in self.tables.symbols:
            shndx, kind = sym.shndx, sym.type
            if shndx == "SHN_UNDEF":
                values.append(None)
                continue
            if shndx == "SHN_ABS":
                values.append(sym.value)
                continue
            if shndx == "SHN_COMMON":
                addr, common = common, common + -(-sym.size // 16) * 16
                section = "COMMON"
            elif shndx in self.placed:
                addr = self.placed[shndx] + sym.value
                section = self.elf.get_section(shndx).name
            else:
                values.append(None if kind == "STT_SECTION" else 0)  # a section we did not load
                continue
            values.append(addr)
            if kind not in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") or not sym.name:
                continue
            symbol = Symbol(sym.name, addr, sym.size, "func" if kind == "STT_FUNC" else "object", section)
            if kind != "STT_NOTYPE":  # an assembler label: exported when global, never named in output
                self.m.symbols.add(symbol)
            if kind == "STT_FUNC":
                obj.functions.append(symbol)
            if sym.bind in ("STB_GLOBAL", "STB_WEAK"):
                self._export(symbol, sym.bind == "STB_WEAK")
        return values

    def _export(self, symbol: Symbol, weak: bool) -> None:
        """A global definition, visible to the objects loaded later (as if EXPORT_SYMBOL'd). Two
        loaded objects defining one global is a clash, as two modules exporting one symbol is."""
        clash = self.m.symbols.export(symbol, str(self.path), weak)
        if clash is not None:
            raise FtlabError(
                f"{self.path}: global symbol '{symbol.name}' ({symbol.section}) is already defined by {clash}"
            )

    def _resolve(self, name: str) -> int:
        """An undefined symbol's address: an earlier object's global, the lab's runtime, or a stub
        (made on first use) the user asked for. _undefined() has checked it is one of these."""
        sym = self.m.symbols.resolve(name)
        if sym is not None:
            return sym.addr
        if self.stubs[name] == "data":
            addr = self.m.alloc("lab data", DATA_STUB_SIZE, 16)
            self.m.symbols.add(Symbol(name, addr, DATA_STUB_SIZE, "lab", f"--stub {name}=data"))
        else:
            addr = self.m.symbols.get("ftlab_ret0").addr
            self.m.symbols.add(Symbol(name, addr, 0, "lab", f"--stub {name}"))
        return addr

    def _relocations(self):
        """Every relocation of a loaded section: (rel, its section's index, where, symbol, symbol
        index, whether the section is code)."""
        syms = self.tables.symbols
        for sec in self.tables.relocations:
            if sec.target not in self.placed:
                continue
            if sec.kind == "SHT_REL":
                raise FtlabError(
                    f"{self.path}: {sec.name}: REL relocations are not used on {self.arch.name}; only RELA is supported"
                )
            for rel in sec.rels:
                yield rel, sec.target, f"{sec.target_name}+{rel.offset:#x}", syms[rel.sym], rel.sym, sec.code

    def _unbound(self, rel, sym, index) -> bool:
        """Whether a relocation refers to an undefined symbol (not a null relocation, and not a
        section we did not load)."""
        reloc = self.arch.relocs.get(rel.type)
        return self.values[index] is None and sym.type != "STT_SECTION" and not (reloc is not None and reloc.none)

    def _undefined(self) -> None:
        """Every undefined symbol nothing supplies, in one error, in the order of first use: a
        module needing 16 takes one run to learn them all, not 16."""
        missing: dict[str, str] = {}
        uses: dict[str, set[str]] = {}  # for --stub '*': how the code uses each missing symbol
        for rel, index, where, sym, sym_index, code in self._relocations():
            if not self._unbound(rel, sym, sym_index) or sym.bind == "STB_WEAK":
                continue
            if self.m.symbols.resolve(sym.name) is None and sym.name not in self.stubs:
                place = self.placed[index] + rel.offset
                missing.setdefault(sym.name, f"{self.m.symbols.name(place)} ({where})")
                use = self._use(place, self.placed[index]) if code and STUB_ALL in self.stubs else None
                uses.setdefault(sym.name, set()).add(use[0] if use else "address")
        if STUB_ALL in self.stubs:  # each as its use says: data where code reads or writes it
            self.stubs.update({name: "data" if "data" in uses[name] else "ret0" for name in missing})
            return
        if len(missing) == 1:
            [(name, where)] = missing.items()
            raise FtlabError(
                f"{self.path}: undefined symbol '{name}' (used at {where}); "
                f"supply it with --stub {name} or --stub {name}=data"
            )
        if missing:
            listed = ", ".join(f"{name} (used at {where})" for name, where in missing.items())
            raise FtlabError(
                f"{self.path}: {len(missing)} undefined symbols: {listed}; "
                "supply them with --stub NAME or --stub NAME=data"
            )

    def _relocate(self, obj: LoadedObject) -> None:
        self._undefined()
        for rel, index, where, sym, sym_index, code in self._relocations():
            base = self.placed[index]
            place, kind = base + rel.offset, rel.type
            value = self.values[sym_index]
            if value is None and sym.type == "STT_SECTION":
                continue  # against a section we did not load
            stub = None
            if self._unbound(rel, sym, sym_index):
                if sym.bind == "STB_WEAK" and self.m.symbols.resolve(sym.name) is None:
                    value = 0  # an undefined weak symbol is 0, as simplify_symbols() leaves it
                else:
                    value = self._resolve(sym.name)
                    stub = self.m.symbols.get(sym.name)
                obj.imports.setdefault(sym.name, []).append(place)
            self._apply(kind, value or 0, rel.addend, place, where)
            # a reference from data (a pointer in .data) says nothing of how the pointer is used
            # later, as an ops table's function pointer or a pointer to data: either stub is taken
            if stub is not None and stub.section.startswith("--stub") and code:
                stub_kind = "data" if stub.section.endswith("=data") else "ret0"
                self._check_stub_use(sym.name, stub_kind, place, base, where)

    def _check_stub_use(self, name: str, stub: str, place: int, start: int, where: str) -> None:
        """A function stub (ftlab_ret0's code) read as data would give its instruction bytes as
        the value; a data stub called would run zeroed data: refuse both, saying which stub fits."""
        use = self._use(place, start)
        at = f"{self.m.symbols.name(place)} ({where})"
        if use and use[1] > place:  # shown by an instruction after the one holding the field
            at += f" then {self.m.symbols.name(use[1])}"
        at += f": {self.m.disasm(use[1]) if use else 'unknown'}"
        if stub == "ret0" and use and use[0] == "data":
            raise FtlabError(
                f"{self.path}: '{name}' is read or written as data at {at}; "
                f"a function stub cannot stand in for it: use --stub {name}=data"
            )
        if stub == "data" and use and use[0] == "call":
            raise FtlabError(f"{self.path}: '{name}' is called at {at}; a data stub cannot be run: use --stub {name}")

    def _use(self, place: int, start: int) -> tuple[str, int] | None:
        """How the code uses the symbol whose relocated field is at `place`: 'call' (a direct call
        or jump, or an indirect one through the register its address was put in), 'data' (a
        memory access there, directly or through that register) or 'address' (the address only
        escapes), with the address of the instruction that shows it; None if the code does not
        decode up to there. Decoded from the start of the function holding it (else of its
        section, at `start`), one instruction after another: on x86 a decode from any nearer byte
        may start inside an instruction. Each walk is decoded once for all the relocations in it
        (a module has tens of thousands)."""
        m = self.m
        hit = m.symbols.lookup(place)
        func = hit[0] if hit and hit[0].kind == "func" and hit[0].addr >= start else None
        walk_from = func.addr if func else start
        end = m.region(place).end
        if walk_from not in self.walks:
            stop = min(func.addr + func.size, end) if func and func.size else end
            self.walks[walk_from] = asm.starts(m.arch, m.read(walk_from, stop - walk_from), walk_from)
        walk = self.walks[walk_from]
        i = bisect.bisect_right(walk, place) - 1
        if i < 0:
            return None
        addr = walk[i]
        insn = asm.decode(m.arch, m.read(addr, min(16, end - addr)), addr)
        if insn is None or addr + insn.size <= place:
            return None  # the walk stopped before reaching place
        fields = asm.field_offsets(insn)
        if fields and place - addr not in fields:
            return None
        kind = asm.reference_kind(insn)
        if kind == "data" and place - addr == getattr(insn, "imm_offset", None):
            kind = "address"  # x86: the immediate stored (mov qword ptr [x], offset sym), not the operand
        if kind == "address":  # adrp (+ add), lea, mov $sym: what is done with the register?
            return _through_register(m, insn, end) or (kind, addr)
        return kind, addr

    def _apply(self, kind: int, S: int, A: int, P: int, where: str) -> None:
        reloc = self.arch.relocs.get(kind)
        if reloc is None:
            raise FtlabError(f"{self.path}: relocation type {kind} at {where} is not supported on {self.arch.name}")
        if reloc.none:
            return
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


FLAGS = ("rflags", "nzcv")  # a flags register written beside the address is not where it goes
# the stack pointer a `push $sym` moves: the address went to memory, not into it
STACK_POINTERS = ("rsp", "sp")
FLAGS_WIDE = set(FLAGS)
FOLLOWED = 8  # instructions after an address is taken that are searched for its use
WIDE = {f"e{r}": f"r{r}" for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")}


def _wide(name: str) -> str:
    """A register by its full 64-bit name (eax -> rax, r8d -> r8, w3 -> x3): the address may be
    put in the 32-bit half (mov $sym, %eax under -mcmodel=kernel) and used through the whole."""
    if name in WIDE:
        return WIDE[name]
    if name.startswith("r") and name.endswith("d") and name[1:-1].isdigit():
        return name[:-1]
    return "x" + name[1:] if name.startswith("w") and name[1:].isdigit() else name


def _through_register(m, insn, end: int) -> tuple[str, int] | None:
    """What the few instructions after `insn` do with the register it put an address in (and the
    registers a mov copies it to): a load or store through it ('data': arm64's adrp + add + ldr
    [x1, w0, sxtw #3], x86's mov $table, %eax + mov (%rax)), or a call or jump to it ('call': the
    tail call mov x16, x0 + br x16); None when it is overwritten, control leaves the straight
    line, or nothing shows within FOLLOWED instructions."""
    written = [name for name in map(insn.reg_name, insn.regs_access()[1]) if name not in FLAGS + STACK_POINTERS]
    if len(written) != 1:
        return None
    tracked = {_wide(written[0])}
    addr = insn.address + insn.size
    for _ in range(FOLLOWED):
        nxt = asm.decode(m.arch, m.read(addr, min(16, end - addr)), addr) if addr < end else None
        if nxt is None:
            return None
        read, write = ({_wide(nxt.reg_name(r)) for r in regs if nxt.reg_name(r)} for regs in nxt.regs_access())
        bases = {
            _wide(nxt.reg_name(op.mem.base)) for op in nxt.operands if op.type == capstone.CS_OP_MEM and op.mem.base
        }
        if bases & tracked:
            return "data", nxt.address
        if nxt.group(capstone.CS_GRP_CALL) or nxt.group(capstone.CS_GRP_JUMP) or nxt.group(capstone.CS_GRP_RET):
            return ("call", nxt.address) if read & tracked else None
        if nxt.mnemonic == "mov" and read & tracked:
            tracked |= write - FLAGS_WIDE
        elif write & tracked and not read & tracked:
            tracked -= write  # overwritten: the address went nowhere we follow
            if not tracked:
                return None
        addr += nxt.size
    return None
