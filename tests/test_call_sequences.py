"""Issue #12: CALL sequences on both arches against Python references: buffers the calls share and
write (RC4, Adler-32 as zlib computes it), typed results (CRC-16/ITU-T as binascii computes it,
add3's int), and the same sequence through run, trace, record/replay, regs and compare."""

import binascii
import re
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import FtlabError, Machine
from fixtures import catalog
from helpers import ARCHES, ftlab
from tracers import Lab
from tracers.call_results import buffer_lines
from tracers.cli.main import main

SOME = settings(derandomize=True, max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABS = {arch: Lab.open("state", arch) for arch in ARCHES}


def rc4(key: bytes, data: bytes, skip: int = 0) -> bytes:
    """RC4 (the textbook key schedule and generator), the first `skip` keystream bytes dropped."""
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 0xFF
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = []
    for n in range(skip + len(data)):
        i = (i + 1) & 0xFF
        j = (j + s[i]) & 0xFF
        s[i], s[j] = s[j], s[i]
        if n >= skip:
            out.append(data[n - skip] ^ s[(s[i] + s[j]) & 0xFF])
    return bytes(out)


def test_the_rc4_test_vector(arch):
    got = LABS[arch].run_calls('arc4_setkey(ctx=buf(1032), b"Key", 3); arc4_crypt(ctx, out=buf(9), b"Plaintext", 9)')
    assert got.buffers["out"] == bytes.fromhex("bbf316e8d940af0ad3")  # RC4's published vector
    assert [r.value for r in got.results][:1] == [0]  # arc4_setkey's int


@SOME
@given(key=st.binary(min_size=1, max_size=16), first=st.binary(max_size=40), second=st.binary(max_size=40))
@pytest.mark.parametrize("arch", ARCHES)
def test_a_context_carries_the_keystream_across_calls(arch, key, first, second):
    text = (
        f"arc4_setkey(ctx=buf(1032), {key!r}, {len(key)});"
        f"arc4_crypt(ctx, a=buf({len(first) or 1}), {first!r}, {len(first)}):void;"
        f"arc4_crypt(ctx, b={repr(second) if second else 'buf(1)'}, b, {len(second)}):void"  # in place
    )
    got = LABS[arch].run_calls(text)
    assert got.buffers["a"][: len(first)] == rc4(key, first)
    assert got.buffers["b"][: len(second)] == rc4(key, second, skip=len(first))


@SOME
@given(chunks=st.lists(st.binary(max_size=300), max_size=5))
@pytest.mark.parametrize("arch", ARCHES)
def test_adler32_in_updates_is_zlibs(arch, chunks):
    updates = "".join(f"adler_update(ctx, {c!r}, {len(c)}):void;" for c in chunks)
    got = LABS[arch].run_calls(f"adler_init(ctx=buf(8)):void; {updates} adler_final(ctx):u32")
    final = got.results[-1]
    assert (final.type, final.value) == ("u32", zlib.adler32(b"".join(chunks)))
    a, b = final.value & 0xFFFF, final.value >> 16
    assert got.buffers["ctx"] == a.to_bytes(4, "little") + b.to_bytes(4, "little")  # struct adler_ctx {a, b}


def test_repeated_strings_reach_the_guest(arch):
    got = LABS[arch].run_calls(
        r'adler_init(ctx=buf(8)); adler_update(ctx, b"\x00ab" * 1000, 3000); adler_final(ctx):x32'
    )
    assert got.results[-1].value == zlib.adler32(b"\x00ab" * 1000)


def _typed(value: int, kind: str) -> int:
    bits = int(kind[1:])
    v = value & (1 << bits) - 1
    return v - (1 << bits) if kind[0] == "s" and v >> (bits - 1) else v


TYPED = [f"{k}{b}" for k in "usx" for b in (8, 16, 32, 64)]


@pytest.mark.parametrize("kind", TYPED)
def test_typed_results_are_the_c_value_cut_to_the_type(arch, kind):
    crc = binascii.crc_hqx(b"123456789", 0)  # CRC-16/ITU-T (XMODEM), 0x31c3
    add3 = catalog.FUNCTIONS["add3"].reference(-1, 0, -5)  # int: -6
    got = LABS[arch].run_calls(f'crc_itu_t(0, b"123456789", 9):{kind}').results[0]
    assert got.type == kind
    if int(kind[1:]) <= 16:  # the u16's bits; above them the register holds what the code left
        assert got.value == _typed(crc, kind)
    funcs = Lab.open("funcs", arch)
    got = funcs.run_calls(f"add3(-1, 0, -5):{kind}").results[0]
    if int(kind[1:]) <= 32:
        assert got.value == _typed(add3, kind)
    assert str(got).startswith(f"add3(-1, 0, -5):{kind} = ")


def test_a_u16_result_needs_its_type():
    """x86 gcc leaves crc_itu_t's upper register bits as they are (a u16 needs only ax), as the
    kernel's does; the type gives the C value."""
    [raw, typed] = LABS["x86_64"].run_calls('crc_itu_t(0, b"123456789", 9); crc_itu_t(0, b"123456789", 9):x16').results
    assert raw.value & 0xFFFF == 0x31C3 and raw.value != 0x31C3
    assert str(typed) == 'crc_itu_t(0, b"123456789", 9):x16 = 0x31c3'


def test_ret_is_the_default_type_and_a_suffix_wins(arch):
    got = Lab.open("funcs", arch).run_calls("add3(-1, 0, -5); add3(-1, 0, -5):u8; divmod(-47, 5):pair", ret="s32")
    assert [(r.type, r.value) for r in got.results] == [("s32", -6), ("u8", 250), ("pair", (-9, -2))]
    assert [str(r).split(" = ")[1] for r in got.results] == ["-6 (0xfffffffa)", "250 (0xfa)", "(-9, -2)"]


def test_buffers_start_zeroed_on_every_run(arch):
    """The heap is reused: a second run's buffer is where the first left its bytes."""
    lab = LABS[arch]
    text = 'adler_update(ctx=buf(8), b"abc", 3):void; adler_final(ctx):x32'  # no adler_init: a = b = 0
    first, second = lab.run_calls(text), lab.run_calls(text)
    a = sum(b"abc") % 65521
    b = (97 + (97 + 98) + (97 + 98 + 99)) % 65521
    assert first.results[-1].value == second.results[-1].value == b << 16 | a


def test_a_refused_call_runs_nothing(capsys, arch):
    code = main(["trace", "--arch", arch, "state", 'adler_init(ctx=buf(8)); adler_update(ctx, b"abc"); nosuch()'])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == (
        "ftlab: error: adler_update() takes 3 arguments (struct adler_ctx *ctx, const u8 *p, unsigned long len), "
        "got 2 (its signature from fixtures/src/state.c)\n"
    )


def test_the_trace_covers_every_call_and_ends_with_results_and_buffers(capsys, arch):
    out = ftlab(
        capsys,
        "trace",
        "--arch",
        arch,
        "state",
        'adler_init(ctx=buf(8)):void; adler_update(ctx, "abc", 3):void; adler_final(ctx):x32',
    )
    assert re.findall(r": (\w+) <-", out) == ["adler_init", "adler_update", "adler_final"]
    assert out.endswith(
        '# adler_init(ctx=buf(8)):void = void\n# adler_update(ctx, "abc", 3):void = void\n'
        f"# adler_final(ctx):x32 = {zlib.adler32(b'abc'):#x}\n# ctx[8] = 27 01 00 00 4d 02 00 00\n"
    )


def test_a_buffer_is_at_one_address_for_every_call(capsys, arch):
    """Each call gets the buffer's address: the probe events' $arg1 at each entry agree."""
    out = ftlab(
        capsys,
        "trace",
        "--arch",
        arch,
        "state",
        "-e",
        "f adler_init p=$arg1",
        "-e",
        "f adler_update p=$arg1",
        "-e",
        "f adler_final p=$arg1",
        'adler_init(ctx=buf(8)); adler_update(ctx, b"abc", 3); adler_final(ctx)',
    )
    assert re.findall(r"p=(0x[0-9a-f]+)", out) == [hex(Machine.HEAP[0])] * 3


def test_replay_prints_what_trace_printed(capsys, arch, tmp_path):
    text = 'arc4_setkey(ctx=buf(1032), k=b"Key", 3); arc4_crypt(ctx, out=buf(9), b"Plaintext", 9):void'
    traced = ftlab(capsys, "trace", "--arch", arch, "--tracer", "function_graph", "state", text)
    path = str(tmp_path / "calls.ftl")
    ftlab(capsys, "record", "--arch", arch, "--tracer", "function_graph", "state", text, "-o", path)
    assert ftlab(capsys, "replay", path) == traced
    assert "# k[3] = 4b 65 79\n# out[9] = bb f3 16 e8 d9 40 af 0a d3\n" in traced


def test_a_stopped_sequence_is_recorded_without_results(capsys, arch, tmp_path):
    text = 'adler_init(ctx=buf(8)); adler_update(16, b"a", 1)'  # a struct at address 16: a fault
    path = str(tmp_path / "stopped.ftl")
    assert main(["record", "--arch", arch, "state", text, "-o", path]) == 1
    err = capsys.readouterr().err
    assert main(["replay", path]) == 1
    out, again = capsys.readouterr()
    assert again == err and "guest fault" in err
    assert "adler_init <-" in out and "# stopped:" in out and " = " not in out


def test_regs_takes_the_hit_during_the_call_that_reaches_at(capsys, arch):
    """adler_final is reached by the last call: its first argument is the buffer the first set up."""
    out = ftlab(
        capsys,
        "regs",
        "--arch",
        arch,
        "--at",
        "adler_final",
        "state",
        'adler_init(ctx=buf(8)); adler_update(ctx, b"abc", 3); adler_final(ctx)',
    )
    first_arg = {"x86_64": "di", "arm64": "x0"}[arch]
    heap = f"{Machine.HEAP[0]:#018x}"
    assert re.search(rf"^   {first_arg} +{heap} {heap} equal$", out, re.MULTILINE), out
    assert "DIFFERENT" not in out.split("== ftrace_partial_regs")[0]


def test_compare_attaches_to_the_first_call_by_default(capsys):
    out = ftlab(capsys, "compare", "state", "adler_init(ctx=buf(8)); adler_final(ctx)")
    assert out.startswith("adler_init: called as adler_init(ctx=buf(8)); adler_final(ctx)\n")


def test_calls_that_never_reach_at_are_named(capsys):
    assert main(["compare", "state", "adler_init(ctx=buf(8)); adler_final(ctx)", "--at", "crc_itu_t"]) == 1
    assert capsys.readouterr().err == (
        "ftlab: error: adler_init(ctx=buf(8)); adler_final(ctx) never reached crc_itu_t\n"
    )


def test_run_prints_every_result_then_every_named_buffer(capsys):
    out = ftlab(capsys, "run", "--arch", "all", "state", 'crc_itu_t(0, s=b"12" * 20, 40):x16; crc_itu_t(0, s, 40):u16')
    crc = binascii.crc_hqx(b"12" * 20, 0)
    for arch in ARCHES:
        lines = [line.removeprefix(f"{arch}: ") for line in out.splitlines() if line.startswith(f"{arch}: ")]
        assert lines[:2] == [
            f'crc_itu_t(0, s=b"12" * 20, 40):x16 = {crc:#x}',
            f"crc_itu_t(0, s, 40):u16 = {crc} ({crc:#x})",
        ]
        full = f"{'31 32 ' * 7}31 32  " + "12" * 8  # 16 bytes, two spaces, their ASCII
        assert lines[2:] == [
            "s[40] =",
            f"  00000000: {full}",
            f"  00000010: {full}",
            f"  00000020: {'31 32 ' * 4:<49}12121212",
        ]


def test_the_hex_dump_is_print_hex_dumps():
    """print_hex_dump(KERN_INFO, "  ", DUMP_PREFIX_OFFSET, 16, 1, buf, len, true): offset, the
    bytes, and the ASCII from column 49 of the row (lib/hexdump.c)."""
    data = bytes(range(0x1E, 0x1E + 20))
    assert buffer_lines("b", data) == [
        "b[20] =",
        "  00000000: 1e 1f 20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d  .. !\"#$%&'()*+,-",
        "  00000010: 2e 2f 30 31                                      ./01",
    ]
    assert buffer_lines("e", b"") == ["e[0] ="]
    assert buffer_lines("x", b"\x7f\x80") == ["x[2] = 7f 80"]


def test_lab_call_is_unchanged(arch):
    lab = Lab.open("funcs", arch)
    assert lab.call("add3", -1, 0, -5, ret="i32") == -6
    with pytest.raises(FtlabError, match="takes 3 arguments"):
        lab.run_calls("add3(1, 2)")


def test_a_signature_types_the_result_a_call_leaves_untyped(arch):
    """funcs-g has DWARF (the lab's BTF): add3 returns an int, divmod a 16-byte struct; --ret and a
    :TYPE come first."""
    lab = Lab.open("funcs-g", arch)
    add3, divmod = (catalog.FUNCTIONS[n].reference for n in ("add3", "divmod"))
    got = lab.run_calls("add3(-1, 0, -5); divmod(-47, 5); add3(-1, 0, -5):x32")
    assert [(r.type, r.value) for r in got.results] == [
        ("s32", add3(-1, 0, -5)),
        ("pair", divmod(-47, 5)),
        ("x32", 0xFFFFFFFA),
    ]
    assert lab.run_calls("add3(-1, 0, -5)", ret="u8").results[0].value == 0xFA
