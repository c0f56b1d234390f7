"""Issue #11, objects: every object the lab cannot load faithfully is refused in one line naming
the file and what is wrong (ELF class, byte order, machine, type, a section, symbol, string or
relocation out of range), never an exception from the parser; a data symbol is never called or
read through a function stub. The other kinds of object are made from the committed fixtures by
rewriting their headers (no cross toolchain needed), or with gcc -mx32 where it is installed."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from cc import build
from emulator import FtlabError, Machine
from emulator import arch as arches
from fixtures import catalog
from helpers import ARCHES
from tracers import Lab
from tracers.cli.main import main

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")
MACHINE = {"x86_64": "EM_X86_64", "arm64": "EM_AARCH64"}


def fixture(arch: str, name: str = "funcs") -> bytes:
    return (catalog.OBJ_DIR / arch / f"{name}.o").read_bytes()


def write(tmp_path: Path, data: bytes, name: str = "bad.o") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


class Layout:
    """Where things are in a good fixture (read with pyelftools, independently of the loader)."""

    def __init__(self, data: bytes):
        self.data = data
        self.ehdr = EHDR.unpack_from(data)
        self.shoff = self.ehdr[6]
        self.shnum = self.ehdr[12]
        self.elf = ELFFile(io.BytesIO(data))
        self.names = [s.name for s in self.elf.iter_sections()]

    def index(self, name: str) -> int:
        return self.names.index(name)

    def shdr(self, i: int) -> int:
        """File offset of section header i."""
        return self.shoff + i * SHDR.size

    def section(self, name: str):
        return self.elf.get_section_by_name(name)

    def rela_text(self) -> int:
        return self.index(".rela.text")


def cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def refused(capsys, path: Path, pattern: str) -> str:
    """The CLI refuses path in one `ftlab: error:` line matching pattern; Lab.open refuses the same."""
    code, err = cli(capsys, "run", str(path), "fib(5)")
    assert code == 1, err
    assert err.startswith(f"ftlab: error: {path}: ") and err.count("\n") == 1, err
    with pytest.raises(FtlabError, match=pattern):
        Lab.open(str(path))
    assert re.search(pattern, err), err
    return err


# -- other kinds of object: class, byte order, machine, type -----------------------------------


def test_elf32_object_is_refused(capsys, tmp_path, arch):
    """An ELF32 header on an x86_64 or aarch64 machine (x32, ILP32): not what the lab loads."""
    path = write(tmp_path, patch(fixture(arch), 4, b"\x01"))
    refused(capsys, path, rf"ELFCLASS32 \(32-bit\) object for {MACHINE[arch]} \(\d+\); the lab loads ELFCLASS64")


def test_x32_object_from_gcc_is_refused(capsys, tmp_path):
    """An x32 object as gcc builds it (ELF32, EM_X86_64): it used to run and print wrong results."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    out = tmp_path / "x32.o"
    src = Path(catalog.__file__).parent / "src" / "funcs.c"
    built = subprocess.run([gcc, "-mx32", "-O2", "-c", str(src), "-o", str(out)], check=False, capture_output=True)
    if built.returncode != 0:
        pytest.skip(f"gcc -mx32 unavailable: {built.stderr.decode()[:200]}")
    refused(capsys, out, r"ELFCLASS32 \(32-bit\) object for EM_X86_64 \(62\)")


def to_big_endian(data: bytes) -> bytes:
    """The same relocatable object with every ELF structure big-endian (ELFDATA2MSB): the header,
    the section headers, the symbols and the RELA entries. A faithful aarch64_be-style object
    that pyelftools reads as well as the original."""
    out = bytearray(data)
    head = EHDR.unpack_from(data)
    out[5] = 2
    struct.pack_into(">" + EHDR.format[1:], out, 0, out[:16], *head[1:])
    for i in range(head[12]):
        off = head[6] + i * SHDR.size
        sec = SHDR.unpack_from(data, off)
        struct.pack_into(">" + SHDR.format[1:], out, off, *sec)
        table = {2: SYM, 4: RELA}.get(sec[1])
        for at in range(sec[4], sec[4] + sec[5], table.size) if table else ():
            struct.pack_into(">" + table.format[1:], out, at, *table.unpack_from(data, at))
    return bytes(out)


def test_big_endian_object_is_refused(capsys, tmp_path, arch):
    data = to_big_endian(fixture(arch))
    be = ELFFile(io.BytesIO(data))  # a well-formed big-endian object: pyelftools reads it all
    assert not be.little_endian and be["e_machine"] == MACHINE[arch]
    assert [s.name for s in be.iter_sections()] == Layout(fixture(arch)).names
    path = write(tmp_path, data)
    refused(capsys, path, rf"ELFDATA2MSB \(big-endian\) object for {MACHINE[arch]} \(\d+\); .*little-endian")


@pytest.mark.parametrize(
    "e_type,name",
    [
        (2, r"ET_EXEC \(an executable\)"),
        (3, r"ET_DYN \(a shared object or PIE\)"),
        (4, r"ET_CORE \(a core dump\)"),
        (0, "ET_NONE"),
    ],
)
def test_other_file_types_are_refused_alike(capsys, tmp_path, arch, e_type, name):
    """ET_EXEC, ET_DYN and the rest: the same refusal from the CLI, Lab.open and Machine.load."""
    path = write(tmp_path, patch(fixture(arch), 16, struct.pack("<H", e_type)))
    refused(capsys, path, rf"{name} file; only relocatable objects \(ET_REL: \.o, \.ko\) load")
    with pytest.raises(FtlabError, match=name):
        Machine(arches.get(arch)).load(path)


def test_linked_executable_and_shared_object_are_refused(capsys, tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    src = tmp_path / "m.c"
    src.write_text("int f(void) { return 1; }\nint main(void) { return f(); }\n")
    for flags in ([], ["-shared", "-fPIC"]):
        out = tmp_path / f"out{len(flags)}"
        if subprocess.run([gcc, *flags, str(src), "-o", str(out)], check=False, capture_output=True).returncode:
            pytest.skip("gcc cannot link here")
        code, err = cli(capsys, "run", str(out), "f()")
        assert code == 1 and err.count("\n") == 1, err
        assert f"ftlab: error: {out}: ET_" in err and "only relocatable objects" in err


def test_unemulated_machine_is_refused(capsys, tmp_path, arch):
    path = write(tmp_path, patch(fixture(arch), 18, struct.pack("<H", 243)))
    refused(capsys, path, r"ELF machine EM_RISCV \(243\) is not emulated")


def test_not_elf_and_short_headers(capsys, tmp_path, arch):
    data = fixture(arch)
    refused(capsys, write(tmp_path, b"\x7fEL"), "not an ELF file")
    refused(capsys, write(tmp_path, data[:40]), r"truncated ELF header \(40 of 64 bytes\)")


# -- not a regular file ---------------------------------------------------------------------------


def test_named_pipe_without_writer_is_refused_at_once(capsys, tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: it is refused before it is opened."""
    fifo = tmp_path / "pipe.o"
    os.mkfifo(fifo)
    err = refused(capsys, fifo, r"a named pipe \(FIFO\), not a regular file")
    assert err == f"ftlab: error: {fifo}: a named pipe (FIFO), not a regular file\n"


def test_directory_and_device_are_refused(capsys, tmp_path):
    subdir = tmp_path / "dir.o"
    subdir.mkdir()
    refused(capsys, subdir, "a directory, not a regular file")
    code, err = cli(capsys, "run", "/dev/null", "f()")
    assert (code, err) == (1, "ftlab: error: /dev/null: a character device, not a regular file\n")


# -- sections, strings, symbols and relocations in range -------------------------------------------


def _set_shdr_field(data: bytes, lay: Layout, i: int, field: int, value: int) -> bytes:
    fields = list(SHDR.unpack_from(data, lay.shdr(i)))
    fields[field] = value
    return patch(data, lay.shdr(i), SHDR.pack(*fields))


SH_NAME, SH_TYPE, SH_FLAGS, SH_OFFSET, SH_SIZE, SH_LINK, SH_INFO = 0, 1, 2, 4, 5, 6, 7


@pytest.mark.parametrize(
    "section,field,value,pattern",
    [
        (".text", SH_OFFSET, 0xFFFF_FF00, r"section \[\d+\] \.text: offset 0xffffff00 \+ size 0x[0-9a-f]+ runs past"),
        (".text", SH_SIZE, 1 << 40, r"section \[\d+\] \.text: offset 0x[0-9a-f]+ \+ size 0x10000000000 runs past"),
        (".text", SH_NAME, 0x7FFF, r"section \[\d+\]'s name: offset 0x7fff is past the end of string table"),
        (".rela.text", SH_LINK, 999, r"section \[\d+\] \.rela\.text: sh_link 999 is not a section"),
        (".rela.text", SH_INFO, 999, r"section \[\d+\] \.rela\.text: sh_info 999 is not a section"),
        (".symtab", SH_LINK, 999, r"section \[\d+\] \.symtab: sh_link 999 is not a section"),
        (".bss", SH_SIZE, 1 << 40, r"section \[\d+\] \.bss \(size 0x10000000000.*an object may take 0x4000000"),
    ],
)
def test_section_header_out_of_range(capsys, tmp_path, arch, section, field, value, pattern):
    data = fixture(arch)
    lay = Layout(data)
    path = write(tmp_path, _set_shdr_field(data, lay, lay.index(section), field, value))
    refused(capsys, path, pattern)


def test_section_table_past_the_end(capsys, tmp_path, arch):
    data = fixture(arch)
    refused(capsys, write(tmp_path, patch(data, 40, struct.pack("<Q", len(data) - 10))), "section header table at")
    lay = Layout(data)
    refused(capsys, write(tmp_path, data[: lay.shdr(lay.shnum - 1) + 10]), "runs past the end of the file")


def _symbol_offset(lay: Layout, name: str) -> int:
    symtab = lay.section(".symtab")
    n = next(i for i, s in enumerate(symtab.iter_symbols()) if s.name == name)
    return symtab["sh_offset"] + n * SYM.size


def test_symbol_section_index_and_value_out_of_range(capsys, tmp_path, arch):
    data = fixture(arch)
    lay = Layout(data)
    at = _symbol_offset(lay, "fib")
    st_name, info, other, _, value, size = SYM.unpack_from(data, at)
    bad = patch(data, at, SYM.pack(st_name, info, other, 0xFF00 - 1, value, size))
    refused(capsys, write(tmp_path, bad), r"symbol 'fib' \(section \[\d+\] \.symtab entry \d+\): section index 0xfeff")
    bad = patch(data, at, SYM.pack(st_name, info, other, lay.index(".text"), 1 << 32, size))
    refused(capsys, write(tmp_path, bad), r"symbol 'fib' .*: value 0x100000000 \+ size 0x[0-9a-f]+ is outside .*\.text")
    bad = patch(data, at, SYM.pack(0x7FFF_FFFF, info, other, lay.index(".text"), value, size))
    refused(capsys, write(tmp_path, bad), r"symbol \d+'s name: offset 0x7fffffff is past the end of string table")


def _first_rela(lay: Layout) -> int:
    return lay.section(".rela.text")["sh_offset"]


def test_relocation_out_of_range(capsys, tmp_path, arch):
    data = fixture(arch)
    lay = Layout(data)
    at = _first_rela(lay)
    r_offset, info, addend = RELA.unpack_from(data, at)
    text_size = lay.section(".text")["sh_size"]
    bad = patch(data, at, RELA.pack(text_size - 1, info, addend))
    refused(capsys, write(tmp_path, bad), rf"\.rela\.text entry 0 \(\.text\+{text_size - 1:#x}\): offset .* is outside")
    bad = patch(data, at, RELA.pack(r_offset, (123456 << 32) | (info & 0xFFFFFFFF), addend))
    refused(
        capsys, write(tmp_path, bad), r"entry 0 \(\.text\+0x[0-9a-f]+\): symbol index 123456 is past the symbol table"
    )


UNSUPPORTED = {"x86_64": (42, "R_X86_64_REX_GOTPCRELX"), "arm64": (311, "R_AARCH64_ADR_GOT_PAGE")}


def test_unknown_relocation_type_is_named(capsys, tmp_path, arch):
    data = fixture(arch)
    lay = Layout(data)
    at = _first_rela(lay)
    r_offset, info, addend = RELA.unpack_from(data, at)
    number, name = UNSUPPORTED[arch]
    bad = patch(data, at, RELA.pack(r_offset, (info >> 32 << 32) | number, addend))
    refused(
        capsys,
        write(tmp_path, bad),
        rf"\.rela\.text entry 0 \(\.text\+{r_offset:#x}\): relocation type {number} \({name}\) is not supported "
        rf"on {arch}",
    )


# -- data symbols are not functions ----------------------------------------------------------------


def test_calling_a_data_object_is_refused(capsys, arch):
    """nibble_bits is a table in .rodata (STT_OBJECT): calling it would run its bytes as code."""
    lab = Lab.open(catalog.DEFAULT, arch)
    message = r"^'nibble_bits' is a data object \(STT_OBJECT in \.rodata\), not a function: it cannot be called$"
    with pytest.raises(FtlabError, match=message):
        lab.call("nibble_bits")
    code, err = cli(capsys, "run", "--arch", arch, "funcs", "nibble_bits(1)")
    assert (code, err.count("\n")) == (1, 1) and "ftlab: error: 'nibble_bits' is a data object" in err


def test_function_in_a_non_executable_section_is_not_called(tmp_path, arch):
    """.text without SHF_EXECINSTR: its functions sit in data pages, which are never run."""
    data = fixture(arch)
    lay = Layout(data)
    text = lay.index(".text")
    flags = SHDR.unpack_from(data, lay.shdr(text))[SH_FLAGS]
    lab = Lab.open(str(write(tmp_path, _set_shdr_field(data, lay, text, SH_FLAGS, flags & ~0x4))), init=False)
    message = r"^'fib' is STT_FUNC but in \.text, a section that is not executable: it cannot be called$"
    with pytest.raises(FtlabError, match=message):
        lab.call("fib", 5)


IMPORTS = "imports"  # use_helper(x) = helper(x) + jiffies_like + 1, both undefined


def test_function_stub_for_data_is_refused(capsys, arch):
    """`--stub jiffies_like` (a function returning 0) for a variable read as data would give the
    stub's instruction bytes as its value: refused where it is read, with the stub that fits."""
    path = catalog.OBJ_DIR / arch / f"{IMPORTS}.o"
    code, err = cli(capsys, "run", str(path), "use_helper(1)", "--stub", "helper", "--stub", "jiffies_like")
    assert code == 1 and err.count("\n") == 1, err
    assert f"ftlab: error: {path}: 'jiffies_like' is read or written as data at use_helper+0x" in err
    assert err.endswith("a function stub cannot stand in for it: use --stub jiffies_like=data\n")


def test_data_stub_for_a_function_is_refused(capsys, arch):
    path = catalog.OBJ_DIR / arch / f"{IMPORTS}.o"
    code, err = cli(capsys, "run", str(path), "use_helper(1)", "--stub", "helper=data", "--stub", "jiffies_like=data")
    assert code == 1 and err.count("\n") == 1, err
    assert f"{path}: 'helper' is called at use_helper+0x" in err and err.endswith("use --stub helper\n")


def test_calling_a_data_stub_is_refused(arch):
    lab = Lab.open(str(catalog.OBJ_DIR / arch / f"{IMPORTS}.o"), stubs=["helper", "jiffies_like=data"])
    assert lab.call("use_helper", 41) == 1
    message = r"^'jiffies_like' is a data stub \(--stub jiffies_like=data\), not a function: it cannot be called$"
    with pytest.raises(FtlabError, match=message):
        lab.call("jiffies_like")


@pytest.mark.parametrize("arch_name", ARCHES)
def test_every_committed_object_still_loads(arch_name):
    for path in sorted((catalog.OBJ_DIR / arch_name).glob("*.o")):
        stubs = ["helper", "jiffies_like=data"] if path.stem == IMPORTS else []
        Lab.open(str(path), stubs=stubs)


# -- a stub of the wrong kind, however the code reaches the symbol ---------------------------------

STUB_USES = """
extern int fips_enabled;
extern long table[];
extern void hook(void);
int flag_check(int x) { if (fips_enabled) return x + 1; return x; }
long table_read(int i) { return table[i] + 3; }
void via_pointer(void) { void (*fn)(void) = hook; asm("" : "+r"(fn)); fn(); }
void (*volatile saved)(void);
void store_pointer(void) { saved = hook; }
"""


@pytest.mark.parametrize(
    "function, name",
    [
        ("flag_check", "fips_enabled"),  # x86 cmp dword ptr [rip+x], 0; arm64 adrp + ldr :lo12:
        ("table_read", "table"),  # x86 an absolute 32S operand; arm64 adrp + add, then ldr [x1, w0, sxtw #3]
    ],
)
def test_function_stub_for_data_is_refused_however_it_is_read(tmp_path, arch, function, name):
    """The instruction holding the relocation, or the load through the register it puts the
    address in: a function stub would read as ftlab_ret0's instruction bytes."""
    path = build(tmp_path, arch, STUB_USES)
    others = {"fips_enabled": "fips_enabled=data", "table": "table=data", "hook": "hook"}
    stubs = [spec for symbol, spec in others.items() if symbol != name] + [name]
    with pytest.raises(FtlabError) as err:
        Lab.open(str(path), stubs=stubs)
    message = str(err.value)
    assert re.fullmatch(
        rf".*: '{name}' is read or written as data at {function}\+0x[0-9a-f]+ \(\.text\+0x[0-9a-f]+\)"
        rf"( then {function}\+0x[0-9a-f]+)?: [^;]*\[[^;]*; "
        rf"a function stub cannot stand in for it: use --stub {name}=data",
        message,
    ), message
    lab = Lab.open(str(path), stubs=[*others.values()])
    assert lab.call("flag_check", 5) == 5 and lab.call("table_read", 2) == 3  # zeroed data


def test_data_stub_for_a_function_called_through_a_register_is_refused(tmp_path, arch):
    """Its address put in a register, then called through it (blr x0; x86 call rax)."""
    path = build(tmp_path, arch, STUB_USES)
    with pytest.raises(FtlabError, match=r": 'hook' is called at via_pointer\+0x[0-9a-f]+ .*use --stub hook$"):
        Lab.open(str(path), stubs=["fips_enabled=data", "table=data", "hook=data"])


def test_a_function_address_stored_as_an_immediate_is_not_data(tmp_path, arch):
    """x86 `mov qword ptr [rip+saved], offset hook`: the relocated field is the immediate, the
    symbol's address; the memory operand is another symbol's."""
    path = build(tmp_path, arch, STUB_USES)
    lab = Lab.open(str(path), stubs=["fips_enabled=data", "table=data", "hook"])
    lab.call("store_pointer")
    assert lab.machine.u64(lab.machine.symbols.get("saved").addr) == lab.machine.symbols.get("ftlab_ret0").addr


def test_a_function_address_pushed_as_an_argument_is_not_data(tmp_path):
    """x86 `push $hook`, then a load through rsp (NF_HOOK's okfn passed on the stack, as in
    br_netfilter.ko): the address went to memory, not into rsp, so the load says nothing of hook,
    and --stub '*' makes it the function stub its call needs. x86 only: arm64 has no push."""
    source = """
extern void hook(void);
extern long many(long);
long call_hook(void) { hook(); return 7; }
asm(".text\\n.globl pass_on_stack\\npass_on_stack:\\n push $hook\\n mov 8(%rsp), %rdi\\n"
    " call many\\n add $8, %rsp\\n ret\\n");
"""
    lab = Lab.open(str(build(tmp_path, "x86_64", source)), stubs=["*"])
    assert lab.machine.symbols.get("hook").section == "--stub hook"
    assert lab.call("call_hook") == 7


def test_a_site_in_a_function_with_no_symbol_is_named_by_its_address(tmp_path, arch, capsys):
    """A local function whose symbol was stripped (kvm.ko has such fentry stubs): the compiler's
    table still records its site, and the kernel's ftrace traces it and prints its address (%ps)."""
    path = build(tmp_path, arch, SITELESS_NAME)
    objcopy = shutil.which({"x86_64": "objcopy", "arm64": "aarch64-linux-gnu-objcopy"}[arch])
    if objcopy is None:
        pytest.skip("no objcopy for this arch")
    subprocess.run([objcopy, "--strip-symbol=helper", str(path)], check=True)
    lab = Lab.open(str(path))
    [unnamed] = [s for s in lab.sites if s.func.section == "unnamed"]
    assert unnamed.func.name == f"{unnamed.func.addr:#x}"
    assert lab.call("caller", 3) == 2 * 3 + 1 + 1
    assert main(["trace", "--arch", arch, str(path), "caller(3)"]) == 0
    lines = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "<-" in line]
    assert lines == ["caller <-ftlab_caller", f"{unnamed.func.addr:#x} <-caller"]


SITELESS_NAME = """
static __attribute__((noinline)) long helper(long x) { asm(""); return 2 * x + 1; }
long caller(long x) { return helper(x) + 1; }
"""
