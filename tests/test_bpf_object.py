"""BPF objects: the committed fixture programs open with the programs, sections, kinds, targets
and maps their sources declare; loading applies every relocation as libbpf and the verifier do,
on both arches' machines; malformed or unsupported objects are one-line errors that say where.
References: the C sources (read here with regular expressions), llvm-objdump's relocation and
symbol tables, and libbpf's own examples (internal_map_name's comment)."""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from emulator.arch import ARCHES
from emulator.machine import Machine
from fixtures import catalog
from fixtures.bpf import expected
from tracers.arch import kernel_arch
from tracers.bpf.isa import BpfError, decode
from tracers.bpf.object import KFUNCS, internal_map_name, open_object, parse_section

FIXTURES = Path(__file__).parent.parent / "fixtures"
SOURCES = sorted((FIXTURES / "bpf").glob("*.bpf.c"))
NAMES = [s.name.removesuffix(".c") for s in SOURCES]
BAD = FIXTURES / "obj" / "bpf" / "bad"
C_SIZES = {"u32": 4, "u64": 8, "s64": 8, "long": 8, "int": 4}
MAP_TYPES = {"BPF_MAP_TYPE_HASH": 1, "BPF_MAP_TYPE_ARRAY": 2, "BPF_MAP_TYPE_PERCPU_ARRAY": 6,
             "BPF_MAP_TYPE_STACK_TRACE": 7, "BPF_MAP_TYPE_RINGBUF": 27}  # fmt: skip
LLVM_OBJDUMP = shutil.which("llvm-objdump")


def obj_path(arch: str, name: str) -> Path:
    return FIXTURES / "obj" / "bpf" / arch / f"{name}.o"


def declared_programs(source: Path) -> list[tuple[str, str]]:
    """(name, section) of every SEC("...") function in the C source, in source order."""
    text = source.read_text()
    pattern = r'SEC\("([^"]+)"\)\s*int\s+(?:BPF_PROG\(|BPF_KPROBE\(|BPF_KRETPROBE\()?(\w+)'
    return [(name, sec) for sec, name in re.findall(pattern, text) if sec not in ("license", ".maps")]


def declared_maps(source: Path) -> dict[str, dict[str, int]]:
    """The BTF-defined maps of the source: {name: {type, max_entries, key_size, value_size}}."""
    maps = {}
    for body, name in re.findall(r"struct \{(.*?)\} (\w+) SEC\(\"\.maps\"\)", source.read_text(), re.DOTALL):
        spec = {"key_size": 0, "value_size": 0}
        for field, value in re.findall(r"__uint\((\w+), ([^;]+)\);", body):
            if field == "type":
                spec["type"] = MAP_TYPES[value]
            else:  # a number, or a product of numbers and sizeof(T)
                factors = [C_SIZES[f[7:-1]] if f.startswith("sizeof(") else int(f) for f in value.split(" * ")]
                spec[field] = math.prod(factors)
        for field, ctype in re.findall(r"__type\((\w+), ([\w ]+)\);", body):
            spec[f"{field}_size"] = C_SIZES[ctype]
        maps[name] = spec
    return maps


@pytest.mark.parametrize("name", NAMES)
def test_programs_are_the_sources(arch, name):
    obj = open_object(obj_path(arch, name))
    found = [(p.name, p.section) for p in obj.programs]
    assert sorted(found) == sorted(declared_programs(FIXTURES / "bpf" / f"{name}.c"))
    for p in obj.programs:
        assert p.kind == p.section.split("/")[0] and p.target == p.section.split("/", 1)[1]
    assert obj.license == "GPL"


def test_all_eight_kinds_are_covered(arch):
    kinds = {p.kind for name in NAMES for p in open_object(obj_path(arch, name)).programs}
    assert kinds == {"kprobe", "kretprobe", "kprobe.multi", "kretprobe.multi", "kprobe.session", "fentry", "fexit",
                     "fmod_ret"}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_btf_maps_are_the_sources(arch, name):
    obj = open_object(obj_path(arch, name))
    specs = {m.name: m for m in obj.maps if m.section == ".maps"}
    declared = declared_maps(FIXTURES / "bpf" / f"{name}.c")
    assert set(specs) == set(declared)
    for map_name, want in declared.items():
        m = specs[map_name]
        assert {
            "type": m.type,
            "max_entries": m.max_entries,
            "key_size": m.key_size,
            "value_size": m.value_size,
        } == want
        if m.key_type_id:  # the BTF key/value types have the declared sizes too
            assert obj.btf.size_of(m.key_type_id) == m.key_size
            assert obj.btf.size_of(m.value_type_id) == m.value_size


def test_global_data_maps_as_libbpf_names_them(arch):
    obj = open_object(obj_path(arch, "globals.bpf"))
    by_section = {m.section: m for m in obj.maps if m.section != ".maps"}
    assert {s: m.name for s, m in by_section.items()} == {
        ".rodata": "globals.rodata",
        ".data": "globals.data",
        ".bss": "globals.bss",
    }
    # const volatile long min_n = 3; long total = 1000; long hits, misses;
    assert by_section[".rodata"].init == struct.pack("<q", 3)
    assert by_section[".data"].init == struct.pack("<q", 1000)
    assert by_section[".bss"].value_size == 16 and by_section[".bss"].init == b""
    assert all(m.type == 2 and m.key_size == 4 and m.max_entries == 1 for m in by_section.values())


def test_internal_map_names_match_libbpfs_examples():
    # the examples in the comment of libbpf.c's internal_map_name
    assert internal_map_name("my_object_name", ".rodata") == "my_objec.rodata"
    assert internal_map_name("my_object_name", ".bss") == "my_objec.bss"
    assert internal_map_name("my_object_name", ".kconfig") == "my_obje.kconfig"
    assert internal_map_name("my_object_name", ".rodata.abracadabra") == ".rodata.abracad"


@pytest.mark.parametrize(
    "section, expected",
    [
        ("kprobe/add3", ("kprobe", "add3", 0)),
        ("kprobe/add3+0x10", ("kprobe", "add3", 16)),
        ("kprobe/add3+010", ("kprobe", "add3", 8)),  # %li: a leading 0 is octal
        ("kprobe/add3+12", ("kprobe", "add3", 12)),
        ("kretprobe/fib", ("kretprobe", "fib", 0)),
        ("kprobe.multi/chain_*", ("kprobe.multi", "chain_*", 0)),
        ("kretprobe.multi/*", ("kretprobe.multi", "*", 0)),
        ("kprobe.session/fib", ("kprobe.session", "fib", 0)),
        ("fentry/fib", ("fentry", "fib", 0)),
        ("fexit/fib", ("fexit", "fib", 0)),
        ("fmod_ret/mix_flags", ("fmod_ret", "mix_flags", 0)),
    ],
)
def test_section_names(section, expected):
    assert parse_section(section) == expected


@pytest.mark.parametrize(
    "section, words",
    [
        ("kretprobe/fib+4", "kretprobes do not support offset"),
        ("kprobe/add3+-4", "non-negative"),
        ("kprobe/a-b", "kprobe name is invalid"),
        ("kprobe", "no function to attach to"),
        ("fentry", "no function to attach to"),
        ("kprobe.multix/f", "not a program type the lab attaches"),
        ("tracepoint/sched/sched_switch", "not a program type the lab attaches"),
        ("fentry.s/fib", "not a program type the lab attaches"),
    ],
)
def test_bad_section_names(section, words):
    with pytest.raises(BpfError, match=re.escape(words)) as e:
        parse_section(section)
    assert section in str(e.value)


def objdump_relocs(path: Path) -> dict[str, list[tuple[int, str]]]:
    """llvm-objdump -r: {section: [(offset, symbol)]} of the program sections."""
    out = subprocess.run([LLVM_OBJDUMP, "-r", str(path)], capture_output=True, text=True, check=True).stdout
    relocs: dict[str, list[tuple[int, str]]] = {}
    section = ""
    for line in out.splitlines():
        if m := re.match(r"RELOCATION RECORDS FOR \[(.*)\]:", line):
            section = m[1]
        elif (m := re.match(r"([0-9a-f]{16}) (R_BPF_\w+)\s+(\S+)", line)) and not section.startswith(".debug"):
            relocs.setdefault(section, []).append((int(m[1], 16), m[3]))
    return relocs


def objdump_symbols(path: Path) -> dict[str, tuple[int, str, int]]:
    """llvm-objdump -t: {name: (value, section, size)}."""
    out = subprocess.run([LLVM_OBJDUMP, "-t", str(path)], capture_output=True, text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        if m := re.match(r"([0-9a-f]{16}) .{7} (\S+)\s+([0-9a-f]{16}) (\S+)$", line):
            syms[m[4]] = (int(m[1], 16), m[2], int(m[3], 16))
    return syms


@pytest.mark.skipif(LLVM_OBJDUMP is None, reason="llvm-objdump is not installed")
@pytest.mark.parametrize("name", NAMES)
def test_relocations_resolved(arch, name):
    """Every lddw relocation llvm-objdump lists loads what the verifier leaves there: a map's
    struct bpf_map * address, or the global data value's address plus the variable's offset."""
    path = obj_path(arch, name)
    loaded = open_object(path).load(Machine(ARCHES[arch]))
    syms = objdump_symbols(path)
    relocs = objdump_relocs(path)
    data_maps = {m.spec.section: m for m in loaded.maps.values() if m.spec.section != ".maps"}
    checked = 0
    for prog in loaded.programs:
        start = syms[prog.spec.name][0]
        slots = {}  # slot -> insn of the program's own part (the start of the linked program)
        pos = 0
        for insn in prog.insns:
            slots[pos] = insn
            pos += insn.slots
        for offset, symbol in relocs.get(prog.spec.section, []):
            if not start <= offset < start + syms[prog.spec.name][2]:
                continue
            insn = slots[(offset - start) // 8]
            value, section, _size = syms.get(symbol, (0, "*UND*", 0))
            if section == ".maps":
                assert insn.code == 0x18 and insn.src == 0 and insn.imm == loaded.maps[symbol].addr
            elif section in data_maps:
                assert insn.code == 0x18 and insn.src == 0
                assert insn.imm == data_maps[section].lookup(bytes(4)) + value
            elif section == "*UND*":  # a kfunc
                assert (insn.code, insn.src, insn.imm) == (0x85, 2, KFUNCS[symbol])
            else:
                assert section == ".text" and insn.code == 0x85 and insn.src == 1
            checked += 1
    assert checked == sum(
        1 for sec, rs in relocs.items() if sec in {p.spec.section for p in loaded.programs} for _ in rs
    )
    for m in loaded.maps.values():
        assert loaded.map_at(m.addr) is m


@pytest.mark.skipif(LLVM_OBJDUMP is None, reason="llvm-objdump is not installed")
def test_subprograms_appended_and_calls_aimed(arch):
    """subprog.bpf.o: each program gets the .text functions it calls appended (scale and weigh
    for add3_second: scale calls weigh), and each call lands on its callee's first instruction."""
    path = obj_path(arch, "subprog.bpf")
    loaded = open_object(path).load(Machine(ARCHES[arch]))
    syms = objdump_symbols(path)
    text = bytes.fromhex(_objdump_section_hex(path, ".text"))
    want_callees = {"add3_first": ["weigh"], "add3_second": ["scale", "weigh"], "add3_after": ["scale", "weigh"]}
    for prog in loaded.programs:
        insns = prog.insns
        starts = []
        pos = 0
        for insn in insns:
            starts.append(pos)
            pos += insn.slots
        own = syms[prog.spec.name][2] // 8
        # the appended functions, in order: their bytes are .text's, calls re-aimed
        appended, at = [], own
        while at < pos:
            callee = next(n for n in ("weigh", "scale") if _slots_match(insns, starts, at, text, syms[n]))
            appended.append(callee)
            at += syms[callee][2] // 8
        assert appended == want_callees[prog.spec.name]
        func_starts = {0} | {own + sum(syms[c][2] // 8 for c in appended[:i]) for i in range(len(appended))}
        for i, insn in enumerate(insns):
            if insn.code == 0x85 and insn.src == 1:
                assert starts[i] + insn.imm + 1 in func_starts - {0}


def _objdump_section_hex(path: Path, section: str) -> str:
    out = subprocess.run([LLVM_OBJDUMP, "-s", "-j", section, str(path)], capture_output=True, text=True, check=True)
    rows = out.stdout.split(f"Contents of section {section}:")[1].strip("\n").splitlines()
    return "".join(row[6:41].replace(" ", "") for row in rows)  # " 0000 4 words of hex  ascii"


def _slots_match(insns, starts, at, text: bytes, sym) -> bool:
    """The linked program at slot `at` holds the .text function `sym` (value, section, size),
    call immediates aside (re-aimed)."""
    value, _section, size = sym
    if at not in starts:
        return False
    i = starts.index(at)
    original = decode(text[value : value + size])
    linked = insns[i : i + len(original)]
    return len(linked) == len(original) and all(
        (a.code, a.dst, a.src, a.off) == (b.code, b.dst, b.src, b.off) and (a.imm == b.imm or a.code == 0x85)
        for a, b in zip(linked, original, strict=True)
    )


def test_unknown_kfunc_is_refused_at_load(arch):
    obj = open_object(BAD / "unknown_kfunc.bpf.o")
    with pytest.raises(BpfError) as e:
        obj.load(Machine(ARCHES[arch]))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("unknown_kfunc.bpf.o: kprobe.multi/add3: insn 0 (")
    assert "unknown kfunc 'bpf_no_such_kfunc'" in msg


def test_unknown_section_is_refused():
    with pytest.raises(BpfError) as e:
        open_object(BAD / "unknown_section.bpf.o")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("unknown_section.bpf.o: section 'tracepoint/sched/sched_switch': not a program type")


@pytest.mark.parametrize("keep", [0, 10, 63, 64, 1000, 3000])
def test_truncated_object(tmp_path, keep):
    data = obj_path("x86_64", "counters.bpf").read_bytes()
    bad = tmp_path / "cut.bpf.o"
    bad.write_bytes(data[:keep])
    with pytest.raises(BpfError) as e:
        open_object(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cut.bpf.o: ")


def _btf_offset(data: bytes) -> int:
    """The file offset of .BTF, from the ELF header and section headers (read by hand)."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    for h in headers:
        name = data[strtab + h[0] : data.index(b"\0", strtab + h[0])]
        if name == b".BTF":
            return h[4]
    raise AssertionError("no .BTF")


def _corrupt_btf(tmp_path, patch) -> str:
    data = bytearray(obj_path("arm64", "counters.bpf").read_bytes())
    btf = _btf_offset(bytes(data))
    hdr_len, type_off = struct.unpack_from("<II", data, btf + 4)[0], struct.unpack_from("<I", data, btf + 8)[0]
    patch(data, btf, btf + hdr_len + type_off)
    bad = tmp_path / "badbtf.bpf.o"
    bad.write_bytes(bytes(data))
    with pytest.raises(BpfError) as e:
        open_object(bad)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_btf_unknown_kind(tmp_path):
    # type [1]'s info word: kind 31
    msg = _corrupt_btf(tmp_path, lambda d, _btf, types: struct.pack_into("<I", d, types + 4, 31 << 24))
    assert msg == "badbtf.bpf.o: .BTF: type [1] at offset 0x0: unknown kind 31"


def test_btf_dangling_type_id(tmp_path):
    # type [1] is a PTR (counters' first map's `type` member): aim it past the last type
    msg = _corrupt_btf(tmp_path, lambda d, _btf, types: struct.pack_into("<I", d, types + 8, 9999))
    assert msg.startswith("badbtf.bpf.o: .BTF: type [1] PTR '' refers to type [9999] of ")


def test_btf_bad_magic(tmp_path):
    msg = _corrupt_btf(tmp_path, lambda d, btf, _types: struct.pack_into("<H", d, btf, 0x1234))
    assert msg == "badbtf.bpf.o: .BTF: bad magic 0x1234 or version 1"


def test_btf_type_section_past_end(tmp_path):
    msg = _corrupt_btf(tmp_path, lambda d, btf, _types: struct.pack_into("<I", d, btf + 12, 0x100000))
    assert "type or string section past the end" in msg


@pytest.mark.parametrize("name", NAMES)
def test_objects_hold_no_build_paths(arch, name):
    """build.sh's -fdebug-prefix-map: no directory of the machine that built them."""
    data = obj_path(arch, name).read_bytes()
    assert b"/tmp/" not in data and b"/work/" not in data and b"/home/" not in data


@pytest.mark.parametrize("func", ["add3", "chain_a", "chain_b", "chain_c", "fib", "sum10", "crc32_bitwise"])
def test_expected_call_trees_match_the_catalog(func):
    """fixtures/bpf/expected.py's calls: as many of each function as catalog counts, every one
    returning after its callees."""
    for args in catalog.FUNCTIONS[func].examples:
        entries, exits = expected.calls(func, *args)
        assert Counter(c.func for c in entries) == catalog.FUNCTIONS[func].calls(*args)
        assert Counter(entries) == Counter(exits) and exits[-1] == entries[0]
        for i, call in enumerate(exits):  # post-order: a deeper call returns before its caller
            caller = next((c for c in exits[i + 1 :] if c.depth < call.depth), None)
            assert caller is None or caller.depth == call.depth - 1


def test_btf_name_outside_the_strings(tmp_path):
    msg = _corrupt_btf(tmp_path, lambda d, _btf, types: struct.pack_into("<I", d, types, 0x7FFFFF))
    assert msg == "badbtf.bpf.o: .BTF: type [1] at offset 0x0: name offset 0x7fffff is not a string"


# The psABIs' first three argument registers and return register, by their pt_regs names.
ARG_REGS = {"x86_64": ("di", "si", "dx"), "arm64": ("x0", "x1", "x2")}
RET_REG = {"x86_64": "ax", "arm64": "x0"}


def ctx_load_offsets(insns) -> set[int]:
    """The offsets a program loads from its ctx (r1 at entry, or a register copied from it)."""
    ctx, offsets = {1}, set()
    for insn in insns:
        if insn.code == 0xBF and insn.src in ctx:  # mov dst, src (64-bit)
            ctx.add(insn.dst)
        elif insn.code in (0x61, 0x79) and insn.src in ctx:  # ldxw / ldxdw dst, [src+off]
            offsets.add(insn.off)
    return offsets


def test_kprobe_programs_read_the_labs_pt_regs(arch):
    """vmlinux.h's pt_regs is the lab's (the kernel's): BPF_KPROBE's arguments and
    BPF_KRETPROBE's return value are loads at the lab's pt_regs offsets."""
    pt_regs = kernel_arch(ARCHES[arch]).pt_regs.offsets
    kprobe = open_object(obj_path(arch, "kprobe.bpf")).program("kprobe_add3")
    assert {pt_regs[r] for r in ARG_REGS[arch]} <= ctx_load_offsets(kprobe.insns)
    kretprobe = open_object(obj_path(arch, "kretprobe.bpf")).program("fib_ret")
    assert ctx_load_offsets(kretprobe.insns) == {pt_regs[RET_REG[arch]]}


def test_map_in_map_is_refused():
    with pytest.raises(BpfError) as e:
        open_object(BAD / "map_in_map.bpf.o")
    assert str(e.value) == "map_in_map.bpf.o: section '.rel.maps': map-in-map values are not supported"
