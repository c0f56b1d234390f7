"""BPF ELF objects as libbpf opens and loads them (src/libbpf.c, libbpf/libbpf@f7081a6b):

- open: programs are the function symbols of each executable section (bpf_object__add_programs:
  several may share a section), their kind and target from the section name (section_defs,
  sec_def_matches, attach_kprobe's "SYM+OFF"); maps are the `.maps` variables read from BTF
  (parse_btf_map_def) and the global data sections (bpf_object__init_global_data_maps).
- load: maps are created in guest memory; each program gets the `.text` subprograms it calls
  appended and its calls re-aimed (bpf_object__reloc_code), its map and global data lddw made
  the addresses the verifier puts there (struct bpf_map *, or the value address + offset), and
  its kfunc calls given the lab's kfunc ids.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from emulator.machine import Machine

from . import btf as btf_mod
from .btf import Btf
from .isa import BpfError, Insn, decode, disasm
from .maps import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, BPF_MAP_TYPE_ARRAY, Map, MapSpec, create

# The kfuncs the lab provides, by name: the ids their calls get (for the kernel, BTF ids).
KFUNCS = {"bpf_session_is_return": 1, "bpf_session_cookie": 2}

# The section_defs entries the lab attaches, all "kind+": SEC("kind") or SEC("kind/extras").
KINDS = ("kprobe", "kretprobe", "kprobe.multi", "kretprobe.multi", "kprobe.session", "fentry", "fexit", "fmod_ret")

# ELF relocation types of the BPF target (llvm's ELFRelocs/BPF.def): lddw, call. (The ABS64/ABS32
# ones of .BTF, .BTF.ext and DWARF are ignored as libbpf ignores them; .maps has them only for
# map-in-map values, refused.)
R_BPF_64_64, R_BPF_64_32 = 1, 10
LDDW, CALL = 0x18, 0x85  # BPF_LD|BPF_IMM|BPF_DW, BPF_JMP|BPF_CALL
BPF_PSEUDO_CALL, BPF_PSEUDO_KFUNC_CALL = 1, 2
INSN_SIZE = 8
EM_BPF = 247
BPF_OBJ_NAME_LEN = 16
_DATA_PREFIXES = (".data", ".rodata", ".bss")
# attach_kprobe: sscanf(func_name, "%m[a-zA-Z0-9_.]+%li", ...)
_KPROBE_TARGET = re.compile(r"([A-Za-z0-9_.]+)(?:\+([+-]?(?:0[xX][0-9A-Fa-f]+|0[0-7]*|[1-9][0-9]*)))?")


@dataclass(frozen=True)
class BpfProgramSpec:
    name: str  # the function symbol
    section: str  # e.g. "fentry/fib"
    kind: str  # one of KINDS
    target: str  # the function (kprobe, fentry...) or glob (the .multi and .session kinds)
    insns: list[Insn]  # as in the section: relocations not applied
    offset: int = 0  # kprobe/SYM+OFF
    slot: int = 0  # its first instruction slot in the section


@dataclass(frozen=True)
class _Reloc:
    type: int
    symbol: str
    section: str  # the symbol's section; "" for an undefined (extern) symbol
    value: int  # st_value


@dataclass(frozen=True)
class _Func:
    name: str
    section: str
    slot: int
    slots: int


@dataclass
class LoadedProgram:
    spec: BpfProgramSpec
    insns: list[Insn]  # relocated, subprograms appended: what the verifier and interpreter get


@dataclass
class LoadedBpf:
    obj: BpfObject
    programs: list[LoadedProgram]
    maps: dict[str, Map]
    _by_addr: dict[int, Map] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_addr = {m.addr: m for m in self.maps.values()}

    def map_at(self, addr: int) -> Map | None:
        """The map whose `struct bpf_map *` this is (a helper's map argument)."""
        return self._by_addr.get(addr)


def parse_section(section: str) -> tuple[str, str, int]:
    """(kind, target, offset) of a program section, or a BpfError naming it."""
    kind = next((k for k in KINDS if section == k or section.startswith(k + "/")), None)
    if kind is None:
        raise BpfError(
            f"section '{section}': not a program type the lab attaches ({', '.join(k + '/' for k in KINDS)})"
        )
    target = section[len(kind) + 1 :]
    if not target:
        raise BpfError(f"section '{section}': no function to attach to (SEC(\"{kind}/FUNC\"))")
    if kind not in ("kprobe", "kretprobe"):
        return kind, target, 0
    m = _KPROBE_TARGET.fullmatch(target)
    if m is None:
        raise BpfError(f"section '{section}': kprobe name is invalid: {target}")
    text = m[2] or "0"
    digits = text.lstrip("+-")
    offset = int(digits, 8 if digits[:1] == "0" and digits[1:2] not in ("x", "X") and len(digits) > 1 else 0)
    offset = -offset if text.startswith("-") else offset
    if offset < 0:
        raise BpfError(f"section '{section}': kprobe offset must be a non-negative integer: {offset}")
    if kind == "kretprobe" and offset:
        raise BpfError(f"section '{section}': kretprobes do not support offset specification")
    return kind, m[1], offset


def object_name(path: Path) -> str:
    """bpf_object's name: the file's name to its first dot, at most 15 characters."""
    return path.name[: BPF_OBJ_NAME_LEN - 1].split(".")[0]


def internal_map_name(obj_name: str, section: str) -> str:
    """libbpf's internal_map_name: as much of the object's name as fits with the section's."""
    sfx_len = min(max(7, len(section)), BPF_OBJ_NAME_LEN - 1)
    pfx_len = 0 if "." in section[1:] else min(BPF_OBJ_NAME_LEN - sfx_len - 1, len(obj_name))
    name = obj_name[:pfx_len] + section[:sfx_len]
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)


class BpfObject:
    """An opened BPF object: parsed, nothing in guest memory."""

    def __init__(self, path: Path):
        self.path = path
        self.where = path.name
        self.name = object_name(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BpfError(f"{path}: {err.strerror}") from None
        try:
            elf = ELFFile(io.BytesIO(data))
            self._read(elf, len(data))
        except (ELFError, struct.error, ValueError) as e:
            raise BpfError(f"{self.where}: not a valid BPF ELF object: {e}") from None

    def _read(self, elf: ELFFile, file_size: int) -> None:
        if elf.header["e_machine"] not in ("EM_BPF", EM_BPF) or not elf.little_endian or elf.elfclass != 64:
            raise BpfError(f"{self.where}: not a little-endian 64-bit BPF object (e_machine {elf.header['e_machine']})")
        sections = list(elf.iter_sections())
        for sec in sections:
            if sec["sh_type"] != "SHT_NOBITS" and sec["sh_offset"] + sec["sh_size"] > file_size:
                raise BpfError(
                    f"{self.where}: section '{sec.name}' at offset {sec['sh_offset']:#x}, {sec['sh_size']} bytes, "
                    f"runs past the end of the file ({file_size} bytes)"
                )
        symtab = next((s for s in sections if isinstance(s, SymbolTableSection)), None)
        if symtab is None:
            raise BpfError(f"{self.where}: no symbol table")
        btf_sec = elf.get_section_by_name(".BTF")
        if btf_sec is None:
            raise BpfError(f"{self.where}: no .BTF section (compile with clang -g)")
        license_sec = elf.get_section_by_name("license")
        self.license = license_sec.data().split(b"\0")[0].decode() if license_sec is not None else ""
        names = {i: s.name for i, s in enumerate(sections)}
        symbols = list(symtab.iter_symbols())

        self.code = self._read_code(sections)
        self.relocs = self._read_relocs(sections, names, symbols)
        self.funcs = self._read_funcs(names, symbols)
        self.programs = self._read_programs()
        var_offsets = {
            (names.get(s["st_shndx"]), s.name): s["st_value"]
            for s in symbols
            if s["st_info"]["type"] == "STT_OBJECT" and isinstance(s["st_shndx"], int)
        }
        sizes = {sec.name: sec["sh_size"] for sec in sections}
        self.btf = _fixup_datasecs(btf_mod.parse(btf_sec.data(), self.where), sizes, var_offsets, self.where)
        self.maps = self._btf_maps(var_offsets) + self._data_maps(sections)

    def _read_code(self, sections: list) -> dict[str, bytes]:
        """The executable sections' instructions, by section name, in section order."""
        code = {}
        for sec in sections:
            if sec["sh_type"] == "SHT_PROGBITS" and sec["sh_flags"] & 0x4 and sec["sh_size"]:  # SHF_EXECINSTR
                if sec["sh_size"] % INSN_SIZE:
                    raise BpfError(
                        f"{self.where}: section '{sec.name}': {sec['sh_size']} bytes, "
                        "not a whole number of instructions"
                    )
                code[sec.name] = sec.data()
        return code

    def _read_relocs(self, sections: list, names: dict[int, str], symbols: list) -> dict[str, dict[int, _Reloc]]:
        """The executable sections' relocations, by instruction slot (libbpf ignores those of data
        and debug sections; `.maps` ones are for map-in-map, which the lab does not have)."""
        relocs: dict[str, dict[int, _Reloc]] = {name: {} for name in self.code}
        for sec in sections:
            if not isinstance(sec, RelocationSection):
                continue
            if names.get(sec["sh_info"]) == ".maps":
                raise BpfError(f"{self.where}: section '{sec.name}': map-in-map values are not supported")
            if names.get(sec["sh_info"]) not in self.code:
                continue
            target = names[sec["sh_info"]]
            for r in sec.iter_relocations():
                sym = symbols[r["r_info_sym"]]
                shndx = sym["st_shndx"]
                section = names.get(shndx, "") if isinstance(shndx, int) else ""
                relocs[target][r["r_offset"] // INSN_SIZE] = _Reloc(
                    r["r_info_type"], sym.name, section, sym["st_value"]
                )
        return relocs

    def _read_funcs(self, names: dict[int, str], symbols: list) -> dict[str, list[_Func]]:
        """bpf_object__add_programs: each STT_FUNC symbol of an executable section is a program
        (in .text, a subprogram); a static one outside .text is refused as libbpf does."""
        funcs: dict[str, list[_Func]] = {name: [] for name in self.code}
        for sym in symbols:
            shndx = sym["st_shndx"]
            if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(shndx, int) or names.get(shndx) not in self.code:
                continue
            section = names[shndx]
            if sym["st_value"] % INSN_SIZE or sym["st_value"] + sym["st_size"] > len(self.code[section]):
                raise BpfError(
                    f"{self.where}: section '{section}': program '{sym.name}' "
                    f"at offset {sym['st_value']:#x} crosses the section's end"
                )
            if section != ".text" and sym["st_info"]["bind"] == "STB_LOCAL":
                raise BpfError(f"{self.where}: section '{section}': program '{sym.name}' is static and not supported")
            funcs[section].append(_Func(sym.name, section, sym["st_value"] // INSN_SIZE, sym["st_size"] // INSN_SIZE))
        return funcs

    def _read_programs(self) -> list[BpfProgramSpec]:
        """The programs in libbpf's order (cmp_progs: by section index, then offset)."""
        programs = []
        for section, funcs in self.funcs.items():
            if section == ".text":
                continue
            try:
                kind, target, offset = parse_section(section)
            except BpfError as e:
                raise BpfError(f"{self.where}: {e}") from None
            for f in sorted(funcs, key=lambda f: f.slot):
                insns = decode(self.code[section][f.slot * INSN_SIZE : (f.slot + f.slots) * INSN_SIZE])
                programs.append(BpfProgramSpec(f.name, section, kind, target, insns, offset, f.slot))
        return programs

    def _btf_maps(self, var_offsets: dict) -> list[MapSpec]:
        """parse_btf_map_def for each variable of the `.maps` DATASEC."""
        datasec = self.btf.by_name(".maps", "DATASEC")
        if datasec is None:
            return []
        specs = []
        for vsi in datasec.members:
            var = self.btf[vsi.type]
            name = var.name
            definition = self.btf.skip_modifiers(var.type)
            if var.kind != "VAR" or definition.kind != "STRUCT":
                raise BpfError(f"{self.where}: .maps: map '{name}': definition is a {definition.kind}, not a struct")
            fields: dict[str, int] = {"key_size": 0, "value_size": 0, "max_entries": 0, "map_flags": 0, "type": 0}
            types = {"key": 0, "value": 0}
            for m in definition.members:
                t = self.btf.skip_modifiers(m.type)
                if t.kind != "PTR":
                    raise BpfError(f"{self.where}: .maps: map '{name}': attr '{m.name}': expected PTR, got {t.kind}")
                if m.name in types:
                    size = self.btf.size_of(t.type)
                    sized = f"{m.name}_size"
                    if fields[sized] and fields[sized] != size:
                        raise BpfError(
                            f"{self.where}: .maps: map '{name}': conflicting {m.name} size {fields[sized]} != {size}"
                        )
                    types[m.name], fields[sized] = t.type, size
                elif m.name in fields or m.name in ("numa_node", "pinning"):
                    array = self.btf[t.type]
                    if array.kind != "ARRAY":
                        raise BpfError(
                            f"{self.where}: .maps: map '{name}': attr '{m.name}': expected ARRAY, got {array.kind}"
                        )
                    sized = m.name
                    if m.name in ("key_size", "value_size") and fields[sized] and fields[sized] != array.nelems:
                        raise BpfError(
                            f"{self.where}: .maps: map '{name}': conflicting {m.name} {fields[sized]} != {array.nelems}"
                        )
                    fields[sized] = array.nelems
                else:
                    raise BpfError(f"{self.where}: .maps: map '{name}': unknown field '{m.name}'")
            specs.append(
                MapSpec(name, fields["type"], fields["key_size"], fields["value_size"], fields["max_entries"],
                        fields["map_flags"], types["key"], types["value"], ".maps", var_offsets.get((".maps", name), 0))
            )  # fmt: skip
        return specs

    def _data_maps(self, sections: list) -> list[MapSpec]:
        """bpf_object__init_global_data_maps: an array of one value per non-empty .data*, .rodata*
        and .bss* section, its BTF value type the section's DATASEC."""
        specs = []
        for sec in sections:
            name, size = sec.name, sec["sh_size"]
            if not size or not any(name == p or name.startswith(p + ".") for p in _DATA_PREFIXES):
                continue
            if sec["sh_type"] != ("SHT_NOBITS" if name.startswith(".bss") else "SHT_PROGBITS"):
                continue
            datasec = self.btf.by_name(name, "DATASEC")
            flags = BPF_F_MMAPABLE | (BPF_F_RDONLY_PROG if name.startswith(".rodata") else 0)
            init = b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()
            specs.append(
                MapSpec(internal_map_name(self.name, name), BPF_MAP_TYPE_ARRAY, 4, size, 1, flags, 0,
                        datasec.id if datasec else 0, name, 0, init)
            )  # fmt: skip
        return specs

    def program(self, name: str) -> BpfProgramSpec:
        found = next((p for p in self.programs if p.name == name), None)
        if found is None:
            raise BpfError(f"{self.where}: no program '{name}' (it has {', '.join(p.name for p in self.programs)})")
        return found

    # -- load ---------------------------------------------------------------------------------

    def load(self, machine: Machine) -> LoadedBpf:
        try:
            maps = {spec.name: create(machine, spec, self.btf) for spec in self.maps}
        except BpfError as e:
            raise BpfError(f"{self.where}: {e}") from None
        programs = [LoadedProgram(p, decode(_Linker(self, maps).link(p))) for p in self.programs]
        return LoadedBpf(self, programs, maps)

    def insn_text(self, section: str, slot: int) -> str:
        """ "insn N (disassembly)" for an error at a slot of a section."""
        insns = decode(self.code[section])
        index = pos = 0
        while pos < slot and index < len(insns):
            pos += insns[index].slots
            index += 1
        return f"insn {slot} ({disasm(insns, index)})"


class _Linker:
    """One program's instructions with its subprograms appended (bpf_object__reloc_code) and every
    relocation applied."""

    def __init__(self, obj: BpfObject, maps: dict[str, Map]):
        self.obj = obj
        self.maps = maps
        self.out = bytearray()
        self.placed: dict[tuple[str, int], int] = {}  # (section, first slot) -> slot in out

    def link(self, prog: BpfProgramSpec) -> bytes:
        func = next(f for f in self.obj.funcs[prog.section] if f.slot == prog.slot)
        self._append(func)
        return bytes(self.out)

    def _append(self, func: _Func) -> int:
        at = len(self.out) // INSN_SIZE
        code = self.obj.code[func.section]
        self.out += code[func.slot * INSN_SIZE : (func.slot + func.slots) * INSN_SIZE]
        self.placed[(func.section, func.slot)] = at
        i = 0
        while i < func.slots:
            slot, o = func.slot + i, (at + i) * INSN_SIZE
            op, regs, _off, imm = struct.unpack_from("<BBhi", self.out, o)
            reloc = self.obj.relocs[func.section].get(slot)
            try:
                if op == LDDW:
                    self._lddw(o, regs, imm, reloc)
                elif op == CALL and reloc is not None and not reloc.section:
                    self._kfunc(o, regs, reloc)
                elif op == CALL and regs >> 4 == BPF_PSEUDO_CALL:
                    self._subprog_call(func, slot, at + i, imm, reloc)
                elif reloc is not None:
                    raise BpfError(f"unexpected relocation (type {reloc.type}) against '{reloc.symbol}'")
            except BpfError as e:
                raise BpfError(
                    f"{self.obj.where}: {func.section}: {self.obj.insn_text(func.section, slot)}: {e}"
                ) from None
            i += 2 if op == LDDW else 1
        return at

    def _lddw(self, o: int, regs: int, imm: int, reloc: _Reloc | None) -> None:
        if reloc is None:
            if regs >> 4:
                raise BpfError(f"ld_imm64 with src_reg {regs >> 4} and no relocation")
            return
        if reloc.type != R_BPF_64_64:
            raise BpfError(f"relocation type {reloc.type} on ld_imm64 (expected R_BPF_64_64)")
        if not reloc.section:
            raise BpfError(f"extern variable '{reloc.symbol}' is not supported (only kfunc calls)")
        if reloc.section == ".maps":
            spec = next((s for s in self.obj.maps if s.section == ".maps" and s.offset == reloc.value), None)
            if spec is None:
                raise BpfError(f"no map at .maps+{reloc.value:#x} for '{reloc.symbol}'")
            addr = self.maps[spec.name].addr  # BPF_PSEUDO_MAP_FD -> the verifier's struct bpf_map *
        else:
            spec = next((s for s in self.obj.maps if s.section == reloc.section and s.section != ".maps"), None)
            if spec is None:
                raise BpfError(
                    f"relocation against '{reloc.symbol}' in section '{reloc.section}', not a map or global data"
                )
            # RELO_DATA: insn[1].imm = insn[0].imm + sym_off; the verifier adds the value's address
            addr = self.maps[spec.name].lookup(bytes(4)) + imm + reloc.value
        struct.pack_into("<BBhiBBhI", self.out, o, LDDW, regs & 0x0F, 0, addr & 0xFFFFFFFF, 0, 0, 0, addr >> 32)
        # (the second slot's imm is the upper half; bytes 0-3 of slot 2 are zero by the ISA)

    def _kfunc(self, o: int, regs: int, reloc: _Reloc) -> None:
        if reloc.type != R_BPF_64_32:
            raise BpfError(f"relocation type {reloc.type} on a call (expected R_BPF_64_32)")
        kfunc_id = KFUNCS.get(reloc.symbol)
        if kfunc_id is None:
            raise BpfError(f"unknown kfunc '{reloc.symbol}' (the lab has {', '.join(KFUNCS)})")
        struct.pack_into("<BBhi", self.out, o, CALL, BPF_PSEUDO_KFUNC_CALL << 4 | regs & 0x0F, 0, kfunc_id)

    def _subprog_call(self, caller: _Func, slot: int, out_slot: int, imm: int, reloc: _Reloc | None) -> None:
        if reloc is not None and reloc.type != R_BPF_64_32:
            raise BpfError(f"relocation type {reloc.type} on a call (expected R_BPF_64_32)")
        if reloc is not None:  # against a global function's symbol, or .text's section symbol
            section, target = reloc.section, reloc.value // INSN_SIZE + imm + 1
        else:  # a static function of the same section: imm is relative already
            section, target = caller.section, slot + imm + 1
        if section != ".text":
            raise BpfError(f"call into section '{section}': subprograms must be in .text")
        callee = next((f for f in self.obj.funcs[".text"] if f.slot == target), None)
        if callee is None:
            raise BpfError(f"call to .text insn {target}, which starts no function")
        at = self.placed.get((".text", target))
        if at is None:
            at = self._append(callee)
        struct.pack_into("<i", self.out, out_slot * INSN_SIZE + 4, at - out_slot - 1)


def _fixup_datasecs(btf: Btf, sizes: dict[str, int], var_offsets: dict, where: str) -> Btf:
    """btf_fixup_datasec: clang leaves a DATASEC's size and its variables' offsets 0 in an object;
    libbpf sets them from the ELF section and symbols."""
    types = list(btf.types)
    for t in btf.types:
        if t.kind != "DATASEC" or t.name not in sizes:
            continue
        members = []
        for vsi in t.members:
            var = btf[vsi.type]
            offset = var_offsets.get((t.name, var.name))
            if offset is None:
                raise BpfError(f"{where}: .BTF: DATASEC '{t.name}': no symbol for variable '{var.name}'")
            members.append(replace(vsi, offset=offset))
        types[t.id] = replace(t, size=sizes[t.name], members=tuple(members))
    return Btf(types)


def open_object(path: Path) -> BpfObject:
    """Parse a BPF object (no guest memory): programs, maps, license, BTF."""
    return BpfObject(Path(path))
