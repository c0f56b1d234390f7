"""BPF maps against the kernel's rules written out here as Python models (errnos from
kernel/bpf/arraymap.c, hashtab.c, ringbuf.c), with values read back from guest memory; ring buffer
records framed as the kernel frames them; `bpftool map dump` output verbatim."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.arch import ARCHES
from emulator.machine import Machine
from tracers.bpf.btf import BTF_INT_BOOL, BTF_INT_SIGNED, Btf, BtfType, Member
from tracers.bpf.dump import BtfDumper, JsonWriter, dump_json, dump_text, formatted
from tracers.bpf.isa import BpfError
from tracers.bpf.maps import (
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_RINGBUF,
    MapSpec,
    RingBufMap,
    create,
)
from tracers.bpf.object import open_object

FIXTURES = Path(__file__).parent.parent / "fixtures" / "obj" / "bpf"
ENOTSUPP = 524
HEAPLESS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


_MACHINES: dict[str, Machine] = {}


def shared_machine(arch: str) -> Machine:
    """One machine per arch for the hypothesis examples: each makes fresh maps in its memory."""
    if arch not in _MACHINES:
        _MACHINES[arch] = Machine(ARCHES[arch])
    return _MACHINES[arch]


def loaded(arch: str, name: str):
    return open_object(FIXTURES / arch / f"{name}.bpf.o").load(Machine(ARCHES[arch]))


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


def u64(i: int) -> bytes:
    return struct.pack("<Q", i)


# -- hash: a dict with the kernel's errnos ------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["update", "update", "update", "delete", "lookup"]),
        st.integers(0, 6),  # keys: more than max_entries (4) of them
        st.integers(0, 2**64 - 1),
        st.sampled_from([0, 1, 2, 3]),  # BPF_ANY, BPF_NOEXIST, BPF_EXIST, invalid
    ),
    min_size=8,
    max_size=60,
)


@HEAPLESS
@given(ops=OPS)
def test_hash_is_a_dict_with_the_kernels_errnos(arch, ops):
    machine = shared_machine(arch)
    m = create(machine, MapSpec("h", BPF_MAP_TYPE_HASH, 8, 8, 4))
    model: dict[int, int] = {}
    for op, key, value, flags in ops:
        if op == "update":
            if flags > 2:
                want = -errno.EINVAL
            elif key in model and flags == 1:
                want = -errno.EEXIST
            elif key not in model and flags == 2:
                want = -errno.ENOENT
            elif key not in model and len(model) == 4:
                want = -errno.E2BIG
            else:
                want = 0
                model[key] = value
            assert m.update(u64(key), u64(value), flags) == want
        elif op == "delete":
            assert m.delete(u64(key)) == (0 if model.pop(key, None) is not None else -errno.ENOENT)
        else:
            addr = m.lookup(u64(key))
            assert (addr != 0) == (key in model)
            if addr:
                assert machine.read(addr, 8) == u64(model[key])
    assert m.items() == [(u64(k), u64(v)) for k, v in model.items()]


def test_full_hash(arch):
    m = create(shared_machine(arch), MapSpec("h", BPF_MAP_TYPE_HASH, 4, 4, 2))
    assert [m.update(u32(k), u32(k), 0) for k in (1, 2, 3)] == [0, 0, -errno.E2BIG]
    assert m.update(u32(2), u32(9), 2) == 0  # replacing needs no free element
    assert m.delete(u32(1)) == 0 and m.update(u32(3), u32(3), 1) == 0
    assert m.items() == [(u32(2), u32(9)), (u32(3), u32(3))]


def test_hash_value_is_guest_memory(arch):
    """A program's write through the looked-up pointer is the map's value."""
    machine = Machine(ARCHES[arch])
    m = create(machine, MapSpec("h", BPF_MAP_TYPE_HASH, 4, 4, 2))
    assert m.update(u32(7), u32(1), 0) == 0
    addr = m.lookup(u32(7))
    machine.write(addr, u32(42))
    assert m.items() == [(u32(7), u32(42))]
    assert m.update(u32(7), u32(5), 0) == 0 and machine.read(addr, 4) == u32(5)


# -- array -------------------------------------------------------------------------------------


@HEAPLESS
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 3]))))
def test_array_errnos(arch, ops):
    machine = shared_machine(arch)
    m = create(machine, MapSpec("a", BPF_MAP_TYPE_ARRAY, 4, 4, 4))
    model = [0] * 4
    for index, value, flags in ops:
        # array_map_update_elem: flags, then index (E2BIG), then NOEXIST (EEXIST: all exist)
        want = -errno.EINVAL if flags > 2 else -errno.E2BIG if index >= 4 else -errno.EEXIST if flags == 1 else 0
        assert m.update(u32(index), u32(value), flags) == want
        if want == 0:
            model[index] = value
        assert (m.lookup(u32(index)) == 0) == (index >= 4)
    assert m.delete(u32(0)) == -errno.EINVAL
    assert m.items() == [(u32(i), u32(v)) for i, v in enumerate(model)]
    # values 8 bytes apart (round_up(value_size, 8)), in guest memory
    assert m.lookup(u32(1)) - m.lookup(u32(0)) == 8
    assert [machine.read(m.lookup(u32(i)), 4) for i in range(4)] == [u32(v) for v in model]


@pytest.mark.parametrize(
    "spec, words",
    [
        (MapSpec("a", BPF_MAP_TYPE_ARRAY, 8, 8, 4), "key_size 8 (must be 4)"),
        (MapSpec("a", BPF_MAP_TYPE_ARRAY, 4, 0, 4), "value_size 0"),
        (MapSpec("h", BPF_MAP_TYPE_HASH, 4, 4, 0), "max_entries 0"),
        (MapSpec("r", BPF_MAP_TYPE_RINGBUF, 0, 0, 6000), "max_entries 6000 (a power of 2 multiple of 4096)"),
        (MapSpec("r", BPF_MAP_TYPE_RINGBUF, 0, 0, 2048), "max_entries 2048"),
        (MapSpec("r", BPF_MAP_TYPE_RINGBUF, 4, 0, 4096), "key_size 4"),
        (MapSpec("q", 22, 0, 4, 4), "map type 22 is not supported"),
    ],
)
def test_map_creation_refused(spec, words):
    with pytest.raises(BpfError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        create(Machine(ARCHES["x86_64"]), spec)
    assert f"map '{spec.name}'" in str(e.value) and "\n" not in str(e.value)


# -- ring buffer -------------------------------------------------------------------------------


def test_ringbuf_record_framing(arch):
    machine = Machine(ARCHES[arch])
    rb = create(machine, MapSpec("rb", BPF_MAP_TYPE_RINGBUF, 0, 0, 4096))
    assert isinstance(rb, RingBufMap)
    a = rb.reserve(5)
    hdr = a - 8
    length, pg_off = struct.unpack("<II", machine.read(hdr, 8))
    assert length == 5 | 1 << 31  # BPF_RINGBUF_BUSY_BIT while reserved
    assert pg_off == 3  # data starts after 3 meta pages: (hdr - rb) >> PAGE_SHIFT
    machine.write(a, b"hello")
    b = rb.reserve(16)
    assert b == a + 16  # round_up(5 + 8, 8)
    assert rb.records() == []  # the first is still busy: a consumer stops there
    rb.submit(a)
    assert struct.unpack("<I", machine.read(hdr, 4))[0] == 5
    rb.discard(b)
    assert struct.unpack("<I", machine.read(b - 8, 4))[0] == 16 | 1 << 30  # BPF_RINGBUF_DISCARD_BIT
    assert rb.output(b"xyz", 0) == 0
    assert rb.output(b"x", 4) == -errno.EINVAL  # only BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP
    assert rb.reserve(8, flags=1) == 0  # bpf_ringbuf_reserve takes no flags
    assert rb.records() == [b"hello", b"xyz"]
    assert struct.unpack("<Q", machine.read(rb.rb + 2 * 4096, 8))[0] == 16 + 24 + 16  # producer_pos
    assert (rb.lookup(b""), rb.update(b"", b"", 0), rb.delete(b"")) == (0, -ENOTSUPP, -ENOTSUPP)


@HEAPLESS
@given(sizes=st.lists(st.integers(0, 300), max_size=80))
def test_ringbuf_fills_as_the_kernel_counts(arch, sizes):
    """Records of round_up(size + 8, 8) bytes until the producer would get size - 1 ahead of the
    (never advancing) consumer; then reserve gives NULL and output -EAGAIN."""
    rb = create(shared_machine(arch), MapSpec("rb", BPF_MAP_TYPE_RINGBUF, 0, 0, 4096))
    used, kept = 0, []
    for i, size in enumerate(sizes):
        length = (size + 8 + 7) // 8 * 8
        data = bytes([i % 256]) * size
        fits = used + length <= 4095
        assert rb.output(data, 0) == (0 if fits else -errno.EAGAIN)
        if fits:
            used += length
            kept.append(data)
    assert rb.records() == kept


# -- fixtures' maps and dumps ------------------------------------------------------------------


def test_global_data_initialised_from_the_sections(arch):
    bpf = loaded(arch, "globals")
    rodata, data, bss = (bpf.maps[f"globals.{s}"] for s in ("rodata", "data", "bss"))
    assert rodata.items() == [(u32(0), struct.pack("<q", 3))]  # const volatile long min_n = 3
    assert data.items() == [(u32(0), struct.pack("<q", 1000))]  # long total = 1000
    assert bss.items() == [(u32(0), bytes(16))]  # long hits, misses


def test_dump_array_hash_percpu(arch):
    bpf = loaded(arch, "counters")
    calls, by_arg, cpu_calls = bpf.maps["calls"], bpf.maps["by_arg"], bpf.maps["cpu_calls"]
    calls.update(u32(0), u64(3), 0)
    calls.update(u32(1), u64(2**64 - 1), 0)  # u64: printed unsigned
    by_arg.update(struct.pack("<q", -5), u32(2), 1)  # s64 key: printed signed
    by_arg.update(struct.pack("<q", 6), u32(1), 1)
    cpu_calls.update(u32(0), u64(4), 0)
    assert dump_text(calls) == (
        "[{\n"
        '        "key": 0,\n'
        '        "value": 3\n'
        "    },{\n"
        '        "key": 1,\n'
        '        "value": 18446744073709551615\n'
        "    }\n"
        "]\n"
    )
    assert dump_text(by_arg) == (
        '[{\n        "key": -5,\n        "value": 2\n    },{\n        "key": 6,\n        "value": 1\n    }\n]\n'
    )
    assert dump_text(cpu_calls) == (
        "[{\n"
        '        "key": 0,\n'
        '        "values": [{\n'
        '                "cpu": 0,\n'
        '                "value": 4\n'
        "            }\n"
        "        ]\n"
        "    }\n"
        "]\n"
    )
    assert dump_json(by_arg)[0] == {
        "key": ["0xfb", "0xff", "0xff", "0xff", "0xff", "0xff", "0xff", "0xff"],
        "value": ["0x02", "0x00", "0x00", "0x00"],
        "formatted": {"key": -5, "value": 2},
    }
    assert dump_json(cpu_calls) == [
        {
            "key": ["0x00"] * 4,
            "values": [{"cpu": 0, "value": ["0x04"] + ["0x00"] * 7}],
            "formatted": {"key": 0, "values": [{"cpu": 0, "value": 4}]},
        }
    ]
    assert formatted(calls) == [{"key": 0, "value": 3}, {"key": 1, "value": 2**64 - 1}]


def test_dump_global_data(arch):
    bpf = loaded(arch, "kprobe")
    bss = bpf.maps["kprobe.bss"]
    # int last_a; long last_b, last_c; u64 last_ip;  -> offsets 0, 8, 16, 24
    bss.update(u32(0), struct.pack("<iiqqQ", -7, 0, 8, 9, 0x1234), 0)
    assert dump_text(bss) == (
        "[{\n"
        '        "value": {\n'
        '            ".bss": [{\n'
        '                    "last_a": -7\n'
        "                },{\n"
        '                    "last_b": 8\n'
        "                },{\n"
        '                    "last_c": 9\n'
        "                },{\n"
        '                    "last_ip": 4660\n'
        "                }\n"
        "            ]\n"
        "        }\n"
        "    }\n"
        "]\n"
    )
    # a char array with a NUL: a string
    assert formatted(bpf.maps["kprobe.rodata"]) == [
        {"value": {".rodata": [{"____kprobe_add3.____fmt": "add3 a=%d b=%ld c=%ld"}]}}
    ]


def test_dump_without_btf_types_is_hex(arch):
    """A map declared with key_size/value_size has no BTF types: print_entry_plain's hex."""
    stacks = loaded(arch, "stack").maps["stacks"]
    stacks.update(u32(1), bytes(range(64)), 0)
    rows = "\n".join(
        " ".join(f"{b:02x}" for b in range(r, r + 8)) + "  " + " ".join(f"{b:02x}" for b in range(r + 8, r + 16))
        for r in range(0, 64, 16)
    )
    assert dump_text(stacks) == f"[key:\n01 00 00 00\nvalue:\n{rows}\n]\n"
    assert dump_json(stacks) == [{"key": ["0x01", "0x00", "0x00", "0x00"], "value": [f"0x{b:02x}" for b in range(64)]}]


def test_dump_empty_and_ringbuf(arch):
    bpf = loaded(arch, "multi")
    assert dump_text(bpf.maps["entries"]) == "[]\n"
    bpf.maps["events"].output(b"12345678", 0)
    assert dump_text(bpf.maps["events"]) == "[]\n"  # get_next_key: -ENOTSUPP, nothing dumped


def test_btf_dumper_kinds():
    """btf_dumper.c's forms, plain text and JSON: signed int, bool, enum by name, a char array
    with a NUL as a string, pointers ("%p" with glibc's (nil) / %lu), a bitfield in hex."""
    types = [
        BtfType(0, "UNKN", "void"),
        BtfType(1, "INT", "int", size=4, encoding=BTF_INT_SIGNED, bits=32),
        BtfType(2, "INT", "_Bool", size=1, encoding=BTF_INT_BOOL, bits=8),
        BtfType(3, "ENUM", "num", size=4, members=(Member("ONE", 0, 1), Member("TWO", 0, 2))),
        BtfType(4, "INT", "char", size=1, encoding=BTF_INT_SIGNED, bits=8),
        BtfType(5, "ARRAY", "", type=4, nelems=8),
        BtfType(6, "PTR", "", type=0),
        BtfType(7, "INT", "unsigned int", size=4, bits=32),
        BtfType(8, "STRUCT", "s", size=40, kflag=True, members=(
            Member("a", 1, 0), Member("ok", 2, 32), Member("e", 3, 64), Member("name", 5, 96),
            Member("p", 6, 160), Member("nil", 6, 224), Member("bits", 7, 290, 3),
        )),
    ]  # fmt: skip
    data = struct.pack("<i?3xi8sQQI", -1, True, 2, b"fib", 0x1000, 0, 0b11101 << 2 | 0b10)  # bits 2..4: 0b101
    plain, js = JsonWriter(pretty=True), JsonWriter(pretty=False)
    BtfDumper(Btf(types), plain, plain_text=True).dump(8, data)
    BtfDumper(Btf(types), js, plain_text=False).dump(8, data)
    assert plain.text() == (
        '{\n    "a": -1,\n    "ok": true,\n    "e": "TWO",\n    "name": "fib",\n'
        '    "p": "0x1000",\n    "nil": "(nil)",\n    "bits": 0x5\n}'
    )
    assert js.text() == '{"a":-1,"ok":true,"e":"TWO","name":"fib","p":4096,"nil":0,"bits":"0x5"}'
