"""The ELF loader: every fixture variant runs every function correctly; relocations checked
against capstone's decoding of the relocated code."""

import re
import struct

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from cc import build
from emulator import FtlabError, Machine
from emulator import arch as arches
from emulator.asm import disassemble
from fixtures import catalog
from helpers import EXAMPLES, all_variants
from tracers.arch import kernel_arch
from tracers.cli.main import main


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
        match=r"imports.o: undefined symbol 'jiffies_like' \(used at use_helper\+0x[0-9a-f]+ "
        r"\(.text\+0x[0-9a-f]+\)\); supply it with --stub jiffies_like or --stub jiffies_like=data$",
    ):
        Machine(arches.get(arch)).load(catalog.OBJ_DIR / arch / IMPORTS, stubs=["helper"])


MANY = """
extern long first_f(long);
extern int second_d, third_d;
extern long fourth_f(long);
long use_them(long x) { return fourth_f(first_f(x) + second_d) + third_d; }
long again(long x) { return first_f(x) + 1; }
"""


def test_every_undefined_symbol_in_one_error(tmp_path, arch):
    """One run names them all, once each, in the order of their first use in the file."""
    path = build(tmp_path, arch, MANY)
    with pytest.raises(FtlabError) as err:
        Machine(arches.get(arch)).load(path)
    message = str(err.value)
    assert "\n" not in message
    used = r" \(used at use_them\+0x[0-9a-f]+ \(\.text\+0x[0-9a-f]+\)\)"
    listed = re.fullmatch(
        rf"{re.escape(str(path))}: 4 undefined symbols: (\w+){used}, (\w+){used}, (\w+){used}, (\w+){used}; "
        r"supply them with --stub NAME or --stub NAME=data",
        message,
    )
    assert listed is not None, message
    with open(path, "rb") as fh:  # the reference: the relocations in file order, first use of each
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        order = []
        for rel in elf.get_section_by_name(".rela.text").iter_relocations():
            name = symtab.get_symbol(rel["r_info_sym"]).name
            if name in ("first_f", "second_d", "third_d", "fourth_f") and name not in order:
                order.append(name)
    assert list(listed.groups()) == order
    with pytest.raises(FtlabError, match=r"^[^\n]*: 3 undefined symbols: second_d ") as err:
        Machine(arches.get(arch)).load(path, stubs=["first_f"])
    assert "first_f" not in str(err.value)


def test_null_relocation_is_a_no_op(tmp_path, arch):
    """R_X86_64_NONE / R_AARCH64_NONE (65 in 14 Debian 6.1 amd64 modules): nothing changes, and
    its symbol need not exist."""
    source = 'long f(long x) { asm volatile(".reloc ., BFD_RELOC_NONE, not_defined_anywhere"); return x + 1; }'
    path = build(tmp_path, arch, source)
    with open(path, "rb") as fh:
        types = {rel["r_info_type"] for rel in ELFFile(fh).get_section_by_name(".rela.text").iter_relocations()}
    assert 0 in types
    m = Machine(arches.get(arch))
    obj = m.load(path)
    text = obj.sections[".text"][0]
    with open(path, "rb") as fh:
        compiled = ELFFile(fh).get_section_by_name(".text").data()
    loaded = m.read(*text)
    assert m.call("f", 41) == 42
    assert "not_defined_anywhere" not in obj.imports and "not_defined_anywhere" not in m.symbols
    if arch == "arm64":  # no other relocation in f there: the code is as compiled
        assert loaded == compiled


PIC = "extern int counter; int get(void) { return counter; }"
TLS = "__thread int counter; int get(void) { return counter; }"
REFUSED = {  # arch, source, flags: relocation type number and name, and the hint
    ("x86_64", "pic"): (PIC, "-fPIC -mcmodel=small", 41, "R_X86_64_GOTPCRELX", "kernel code is built -fno-pic"),
    ("arm64", "pic"): (PIC, "-fPIC", 311, "R_AARCH64_ADR_GOT_PAGE", "kernel code is built -fno-pic"),
    ("x86_64", "tls"): (TLS, "", 23, "R_X86_64_TPOFF32", "thread-local (__thread) data has no place"),
    ("arm64", "tls"): (TLS, "", 549, "R_AARCH64_TLSLE_ADD_TPREL_HI12", "thread-local (__thread) data has no place"),
}


@pytest.mark.parametrize("kind", ["pic", "tls"])
def test_pic_and_tls_relocations_are_refused_with_the_flag(tmp_path, arch, kind):
    source, flags, number, name, hint = REFUSED[(arch, kind)]
    path = build(tmp_path, arch, source, flags=flags)
    with pytest.raises(FtlabError) as err:
        Machine(arches.get(arch)).load(path)
    message = str(err.value)
    assert f"relocation type {number} ({name}) is not supported on {arch}: {hint}" in message, message
    assert "\n" not in message


NO_SITES = "long add(long a, long b) { return a + b; }"


def test_an_object_without_patch_sites_says_so(tmp_path, capsys, arch):
    """Built without the site flags (Debian's lib/crc*.ko): `sites` says so in its header line,
    `trace` refuses (an empty trace would say nothing), `run` still runs it."""
    path = str(build(tmp_path, arch, NO_SITES, sites=False))
    flags = {"x86_64": "-pg -mfentry -mrecord-mcount", "arm64": "-fpatchable-function-entry=2"}[arch]
    assert main(["sites", path]) == 0
    out = capsys.readouterr().out
    why = f"built without {flags}, the flags that make patch sites: nothing for ftrace to trace"
    assert out == f"# t.o: 0 patch sites ({arch}): {why}\n"
    assert main(["trace", path, "add(1, 2)"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"ftlab: error: t.o: built without {flags}, the flags that make patch sites")
    assert main(["run", path, "add(1, 2)"]) == 0
    assert capsys.readouterr().out == "add(1, 2) = 3\n"


def test_compare_runs_a_file_on_its_own_arch(capsys, arch):
    """compare's default --arch all means each file on its own arch (not an unknown arch 'all')."""
    path = str(catalog.variant(arch, "funcs").path)
    assert main(["compare", path, "fib(5)"]) == 0
    out = capsys.readouterr().out
    other = next(a for a in arches.ARCHES if a != arch)
    assert [arch] in [line.split() for line in out.splitlines()]
    assert [other] not in [line.split() for line in out.splitlines()]


def test_stubs_supply_a_function_and_data(arch):
    m = Machine(arches.get(arch))
    m.load(catalog.OBJ_DIR / arch / IMPORTS, stubs=["helper", "jiffies_like=data"])
    assert m.call("use_helper", 41) == 0 + 0 + 1
    m.write(m.symbols.get("jiffies_like").addr, struct.pack("<q", 100))
    assert m.call("use_helper", 41) == 101


def test_stub_star_stubs_each_undefined_symbol_as_its_use_says(arch):
    """--stub '*': helper is called (a function returning 0), jiffies_like is read (data), as the
    explicit --stub helper --stub jiffies_like=data would have it."""
    m = Machine(arches.get(arch))
    m.load(catalog.OBJ_DIR / arch / IMPORTS, stubs=["*"])
    assert (m.symbols.get("helper").section, m.symbols.get("jiffies_like").section) == (
        "--stub helper",
        "--stub jiffies_like=data",
    )
    m.write(m.symbols.get("jiffies_like").addr, struct.pack("<q", 100))
    assert m.call("use_helper", 41) == 101


def test_bad_stub_spec_is_refused():
    with pytest.raises(FtlabError, match="bad stub"):
        Machine(arches.get("arm64")).load(catalog.variant("arm64", "funcs").path, stubs=["x=code"])
