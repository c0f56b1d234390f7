"""The ELF loader: every fixture variant runs every function correctly; relocations checked
against capstone's decoding of the relocated code."""

import struct

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from emulator import FtlabError, Machine
from emulator import arch as arches
from emulator.asm import disassemble
from fixtures import catalog
from helpers import EXAMPLES, all_variants
from tracers.arch import kernel_arch


@pytest.mark.parametrize("arch_name,variant", all_variants())
def test_every_function_matches_its_reference(arch_name, variant):
    m = Machine(arches.get(arch_name))
    m.load(catalog.variant(arch_name, variant).path)
    for ex in EXAMPLES:
        assert ex.call(m) == ex.expected, ex


def _decode(m, addr):
    """capstone's text for the instruction at addr (an independent decoder)."""
    return disassemble(m.arch, m.read(addr, 16), addr)[0][2]


def _relocations(path):
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        syms = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and elf.get_section(sec["sh_info"]).name == ".text":
                for r in sec.iter_relocations():
                    sym = syms.get_symbol(r["r_info_sym"])
                    yield r["r_info_type"], r["r_offset"], sym, r["r_addend"]


@pytest.mark.parametrize("arch_name,variant", all_variants())
def test_relocated_code_points_where_the_relocation_says(arch_name, variant):
    """Each relocated instruction, decoded by capstone, refers to S + A."""
    arch = arches.get(arch_name)
    m = Machine(arch)
    obj = m.load(catalog.variant(arch_name, variant).path)
    text = obj.sections[".text"][0][0]
    sections = {name: addr for name, [(addr, _), *_] in obj.sections.items()}
    checked = 0
    for kind, offset, sym, addend in _relocations(obj.path):
        place = text + offset
        if sym["st_info"]["type"] == "STT_SECTION":
            with open(obj.path, "rb") as fh:
                S = sections[ELFFile(fh).get_section(sym["st_shndx"]).name]
        else:
            S = m.symbols.get(sym.name).addr
        name = arch.relocs[kind].name
        if name in ("R_X86_64_PLT32", "R_X86_64_PC32") and m.read(place - 1, 1) in (b"\xe8", b"\xe9"):
            target = S + addend + 4  # rel32 counts from the end of the instruction
            insn = _decode(m, place - 1)
            assert int(insn.split()[-1], 16) == target, insn
        elif name == "R_X86_64_32S":
            assert struct.unpack("<i", m.read(place, 4))[0] == S + addend
        elif name in ("R_AARCH64_CALL26", "R_AARCH64_JUMP26"):
            assert int(_decode(m, place).split("#")[-1], 16) == S + addend
        elif name == "R_AARCH64_ADR_PREL_PG_HI21":
            assert int(_decode(m, place).split("#")[-1], 16) == (S + addend) & ~0xFFF
        elif name == "R_AARCH64_ADD_ABS_LO12_NC":
            assert int(_decode(m, place).split("#")[-1], 16) == (S + addend) & 0xFFF
        else:
            continue
        checked += 1
    assert checked >= 5


def test_site_tables_are_relocated(arch):
    m = Machine(arches.get(arch))
    obj = m.load(catalog.variant(arch, "funcs").path)
    [table] = [secs for name, secs in obj.sections.items() if name in kernel_arch(m.arch).sites.tables]
    addr, size = table[0]
    entries = struct.unpack(f"<{size // 8}Q", m.read(addr, size))
    starts = {f.addr for f in obj.functions}
    assert len(entries) == len(obj.functions) == 12
    assert set(entries) == starts  # gcc =2 and fentry both record func+0


def test_other_arch_object_is_refused():
    m = Machine(arches.get("x86_64"))
    with pytest.raises(FtlabError, match="built for arm64, not x86_64"):
        m.load(catalog.variant("arm64", "funcs").path)


def test_non_elf_is_refused(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_text("not an object")
    with pytest.raises(FtlabError, match=r"junk\.o: not an ELF file"):
        Machine(arches.get("arm64")).load(junk)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FtlabError, match="No such file"):
        Machine(arches.get("arm64")).load(tmp_path / "nope.o")


IMPORTS = "imports.o"  # use_helper(x) = helper(x) + jiffies_like + 1, both undefined


def test_undefined_symbol_is_named(arch):
    with pytest.raises(
        FtlabError,
        match=r"imports.o: undefined symbol 'helper' \(used at use_helper\+0x[0-9a-f]+ "
        r"\(.text\+0x[0-9a-f]+\)\); supply it with --stub helper",
    ):
        Machine(arches.get(arch)).load(catalog.OBJ_DIR / arch / IMPORTS)


def test_stubs_supply_a_function_and_data(arch):
    m = Machine(arches.get(arch))
    m.load(catalog.OBJ_DIR / arch / IMPORTS, stubs=["helper", "jiffies_like=data"])
    assert m.call("use_helper", 41) == 0 + 0 + 1
    m.write(m.symbols.get("jiffies_like").addr, struct.pack("<q", 100))
    assert m.call("use_helper", 41) == 101


def test_bad_stub_spec_is_refused():
    with pytest.raises(FtlabError, match="bad stub"):
        Machine(arches.get("arm64")).load(catalog.variant("arm64", "funcs").path, stubs=["x=code"])
