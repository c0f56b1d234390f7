"""The record file (issue #11): its layout as the README documents it, read here with struct and
zlib; every truncation, mutation, garbage file and odd header refused in one line naming the
file and the part, by the reader (FtlabError, never another exception) and by `ftlab replay`."""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import FtlabError
from helpers import ARCHES
from tracers.cli.main import main
from tracers.kernel_version import MODELLED, OLDEST
from tracers.output.record import replay

# the README's layout: magic, version, header, records and trailer lengths, CRC-32
PREAMBLE = struct.Struct("<8sIIQII")
PROPERTY = settings(
    derandomize=True,
    database=None,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def parts(data: bytes) -> tuple[dict, dict, bytes, dict]:
    """A recording's preamble fields, header, records and trailer, checked as the README says."""
    magic, version, hlen, rlen, tlen, crc = PREAMBLE.unpack_from(data)
    assert (magic, version) == (b"FTLABREC", 6)
    assert len(data) == PREAMBLE.size + hlen + rlen + tlen
    body = data[PREAMBLE.size :]
    assert zlib.crc32(data[: PREAMBLE.size - 4], zlib.crc32(body)) == crc
    header, records, trailer = body[:hlen], body[hlen : hlen + rlen], body[hlen + rlen :]
    return {"version": version}, json.loads(header), records, json.loads(trailer)


def build(header: dict | bytes, records: bytes, trailer: dict | bytes, version: int = 6) -> bytes:
    """A recording with a correct checksum around any parts."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    tail = trailer if isinstance(trailer, bytes) else json.dumps(trailer).encode()
    body = head + records + tail
    fields = PREAMBLE.pack(b"FTLABREC", version, len(head), len(records), len(tail), 0)[:-4]
    return fields + struct.pack("<I", zlib.crc32(fields, zlib.crc32(body))) + body


@functools.cache
def recording(arch: str) -> bytes:
    """fib(3) under function_graph: a small real recording (its replay is known below)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fib.ftl"
        assert main(["record", "--arch", arch, "funcs", "fib(3)", "--tracer", "function_graph", "-o", str(path)]) == 0
        return path.read_bytes()


@functools.cache
def replayed(arch: str) -> str:
    return _replay(recording(arch))


# thousands of small files: in memory where there is a tmpfs (opening a file on disk here took 1 ms)
_scratch = tempfile.TemporaryDirectory(
    prefix="ftlab-record-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
)


def _replay(data: bytes) -> str:
    """The reader on these bytes: the text replay prints, or FtlabError."""
    path = Path(_scratch.name) / "case.ftl"
    path.write_bytes(data)
    out = io.StringIO()
    info = replay(str(path), "text", out)
    return out.getvalue() + repr(info)


def refused(data: bytes) -> str:
    """The one-line message the reader refuses these bytes with (any other exception fails)."""
    with pytest.raises(FtlabError) as err:
        _replay(data)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(Path(_scratch.name) / "case.ftl") + ": ")
    return message.split(": ", 1)[1]


def test_the_layout_is_the_readmes(arch):
    _, header, records, trailer = parts(recording(arch))
    assert header["arch"] == arch and header["tracer"] == "function_graph" and header["call"] == "fib(3)"
    assert len(records) == 10 * header["record_size"]  # fib(3): 5 calls, an entry and an exit each
    assert trailer == {"counters": {"trace_overrun": 0}, "results": [["fib(3)", "s64", 2]], "buffers": []}
    assert "# entries: 5, exits: 5, trace_overrun: 0\n" in replayed(arch)


def test_a_recording_holds_the_counters_no_event_shows(capsys, arch, tmp_path):
    path = tmp_path / "fib.ftl"
    assert main(["record", "--arch", arch, "funcs", "fib(5)", "--tracer", "function_graph", "-o", str(path)]) == 0
    trailer = {"counters": {"trace_overrun": 0}, "results": [["fib(5)", "s64", 5]], "buffers": []}
    assert parts(path.read_bytes())[3] == trailer
    assert main(["replay", str(path)]) == 0
    assert "# entries: 15, exits: 15, trace_overrun: 0\n# fib(5) = 5\n" in capsys.readouterr().out


def test_each_part_cut_short_is_named(arch):
    data = recording(arch)
    _, header, records, _ = parts(data)
    hlen = len(json.dumps(header))
    size = len(data)
    at_records, at_trailer = PREAMBLE.size + hlen, PREAMBLE.size + hlen + len(records)
    assert refused(data[:0]) == "an empty file, not an ftlab recording"
    assert refused(data[:5]) == "truncated at byte 5: expected a 32-byte preamble"
    for cut, part in ((40, "header"), (at_records + 3, "records"), (at_trailer + 1, "trailer"), (size - 1, "trailer")):
        assert refused(data[:cut]) == f"truncated at byte {cut} (in the {part}): the preamble says {size} bytes"
    assert refused(data + b"\0" * 3) == f"3 bytes of junk after the recording's end at byte {size}"


def test_a_changed_byte_is_a_checksum_mismatch(arch):
    data = bytearray(recording(arch))
    data[len(data) // 2] ^= 0x40  # in the records
    assert refused(bytes(data)).startswith("checksum mismatch: CRC-32 0x")
    data = bytearray(recording(arch))
    data[PREAMBLE.size - 1] ^= 1  # the checksum itself
    assert refused(bytes(data)).startswith("checksum mismatch")


def test_other_files_and_versions_are_refused(arch):
    assert refused(b"hello world\n") == "not an ftlab recording"
    assert refused(Path("fixtures/obj/arm64/funcs.o").read_bytes()) == "not an ftlab recording"
    _, header, records, trailer = parts(recording(arch))
    old = json.dumps({"format": "ftlab-record", "version": 4, **header}).encode() + b"\n" + bytes(8)
    assert refused(old) == "recording version 4, this ftlab reads 6"
    assert refused(build(header, records, trailer, version=7)) == "recording version 7, this ftlab reads 6"
    assert refused(build(header, records, trailer, version=5)) == "recording version 5, this ftlab reads 6"


def test_a_header_it_cannot_use_is_named(arch):
    _, header, records, trailer = parts(recording(arch))
    layout = f"recorded with a different {arch} record layout"
    for change, message in (
        ({"record_size": header["record_size"] + 8}, layout),
        ({"exit_fields": header["exit_fields"][:-1]}, layout),  # another release's exit record
        ({"fields": ["x"]}, layout),
        ({"tracer": "nop"}, "a nop recording; this ftlab replays function, function_graph"),
        ({"arch": "sparc"}, "header: unknown architecture 'sparc' (known: x86_64, arm64)"),
        ({"kernel": "2.6"}, f"header: kernel version 2.6: the lab models {OLDEST} to {MODELLED}"),
        ({"clock": "insns"}, "a recording with the insns clock; this ftlab replays counter"),
        ({"call": 3}, "the header's 'call' is not a string"),
        ({"record_size": "64"}, "the header's 'record_size' is not a whole number"),
        ({"symbols": [["fib", -1, 0, "func"]]}, "the header's 'symbols' is not a list of [name, address, size, kind]"),
    ):
        assert refused(build({**header, **change}, records, trailer)) == message
    del header["symbols"]
    assert (
        refused(build(header, records, trailer))
        == "the header's 'symbols' is not a list of [name, address, size, kind]"
    )
    assert refused(build(b"[1, 2]", records, trailer)).startswith("the header at bytes 32-38 is not a JSON object")


def test_a_trailer_or_records_it_cannot_use_are_named(arch):
    _, header, records, trailer = parts(recording(arch))
    size = header["record_size"]
    at = 32 + len(json.dumps(header))
    assert refused(build(header, records[:-1], trailer)) == (
        f"the records at bytes {at}-{at + len(records) - 1} are not whole {size}-byte records "
        f"({len(records) - 1} bytes)"
    )
    results = "the trailer's 'results' is not a list of [call, type, value] (each call's result)"
    for bad in ("5", [["fib(3)", "u8", 256]], [["fib(3)", "s8", -129]], [["fib(3)", "u7", 1]], [["f()", "void", 0]]):
        assert refused(build(header, records, {"counters": {}, "results": bad, "buffers": []})) == results
    assert refused(build(header, records, {"counters": {}, "results": [], "buffers": [["out", "0g"]]})) == (
        "the trailer's 'buffers' is not a list of [name, hex bytes]"
    )
    twice = [["out", ""], ["out", "00"]]
    assert refused(build(header, records, {"counters": {}, "results": [], "buffers": twice})).startswith(
        "the trailer's 'buffers'"
    )
    assert refused(build(header, records, {"result": 5})) == "the trailer's 'counters' is not an object of counts"
    assert refused(build(header, records, b"\xff")).startswith("the trailer at bytes")


def test_a_record_deeper_than_the_shadow_stack_is_refused(arch):
    _, header, records, trailer = parts(recording(arch))
    first = bytearray(records[: header["record_size"]])
    first[32:40] = struct.pack("<Q", 1 << 40)  # kind, ts, ip, parent, then the depth
    assert (
        refused(build(header, bytes(first), trailer))
        == f"a record at depth {1 << 40}, deeper than fgraph's shadow stack"
    )


# -- properties: every input either replays (only if it is the recording) or is one FtlabError --


def test_every_truncation_is_refused(arch):
    data = recording(arch)
    for cut in range(len(data)):
        refused(data[:cut])


@pytest.mark.parametrize("arch", ARCHES)
@PROPERTY
@given(data=st.data())
def test_mutations_are_refused(arch, data):
    original = recording(arch)
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="bytes changed")):
        at = data.draw(st.integers(0, len(original) - 1), label="offset")
        mutated[at] = data.draw(st.integers(0, 255), label="value")
    kind = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    at = data.draw(st.integers(0, len(original)))
    if kind == "insert":
        mutated[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        del mutated[at : at + data.draw(st.integers(1, 16))]
    if bytes(mutated) == original:
        assert _replay(original).startswith(replayed(arch)[:40])
    else:
        refused(bytes(mutated))


@PROPERTY
@given(garbage=st.binary(max_size=200), tail=st.binary(max_size=64), magic=st.booleans())
def test_garbage_is_refused(garbage, tail, magic):
    prefix = b"FTLABREC" + struct.pack("<I", 5) if magic else b""
    refused(prefix + garbage + tail)


SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON = (  # two levels deep is deep enough for a header's values
    SCALAR
    | st.lists(SCALAR | st.lists(SCALAR, max_size=4), max_size=4)
    | st.dictionaries(st.text(max_size=8), SCALAR | st.lists(SCALAR, max_size=4), max_size=4)
)
HEADER_KEYS = ["arch", "kernel", "tracer", "clock", "call", "record_size", "fields", "exit_fields", "symbols"]


@pytest.mark.parametrize("arch", ARCHES)
@PROPERTY
@given(data=st.data())
def test_random_headers_and_trailers_are_replayed_or_refused(arch, data):
    """With a correct checksum around them: a header or trailer with fields changed, dropped or
    added replays only where it still describes these records; otherwise one line."""
    _, header, records, trailer = parts(recording(arch))
    changed = dict(header)
    for key in data.draw(st.lists(st.sampled_from([*HEADER_KEYS, "extra"]), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            changed[key] = data.draw(JSON)
        else:
            changed.pop(key, None)
    pair = {"counters": {"lost": 3}, "results": [["divmod(1, 2)", "pair", [1, 2]]], "buffers": [["out", "00ff"]]}
    tail = data.draw(st.sampled_from([trailer, pair]) | JSON)
    as_bytes = data.draw(st.booleans())
    head = json.dumps(changed).encode()[: data.draw(st.integers(0, 200))] if as_bytes else changed
    blob = build(head, records, json.dumps(tail).encode())
    try:
        text = _replay(blob)
    except FtlabError as err:
        message = str(err)  # one line, checked outside the except block
    else:
        message = None
    if message is not None:
        assert "\n" not in message
        return
    assert isinstance(head, dict)
    for key in ("arch", "kernel", "tracer", "record_size", "fields", "exit_fields"):
        assert changed[key] == header[key], key
    assert text.count("\n 0) ") == replayed(arch).count("\n 0) ")  # every event printed (named or not)


@pytest.mark.parametrize("arch", ARCHES)
@PROPERTY
@given(data=st.data())
def test_random_records_are_replayed_or_refused(arch, data):
    """Whole records of any bytes, with a correct checksum: decoded and printed, or one line."""
    _, header, _, trailer = parts(recording(arch))
    n = data.draw(st.integers(0, 6))
    records = data.draw(st.binary(min_size=n * header["record_size"], max_size=n * header["record_size"]))
    message = ""
    try:
        _replay(build(header, records, trailer))
    except FtlabError as err:
        message = str(err)
    assert "\n" not in message


# -- the command line: one `ftlab: error:` line, exit 1 --


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],
        lambda d: d[:-1] + bytes([d[-1] ^ 1]),
        lambda d: d[:100] + b"\0" + d[101:],
        lambda d: b"garbage",
        lambda d: b"",
    ],
    ids=["truncated", "last-byte", "mid-byte", "garbage", "empty"],
)
def test_replay_of_a_damaged_file_is_one_error_line(capsys, arch, tmp_path, damage):
    path = tmp_path / "fib.ftl"
    path.write_bytes(damage(recording(arch)))
    assert main(["replay", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"ftlab: error: {path}: "), err


def test_replay_of_what_is_no_file(capsys, tmp_path):
    for path, message in ((tmp_path / "none.ftl", "No such file or directory"), (tmp_path, "Is a directory")):
        assert main(["replay", str(path)]) == 1
        assert capsys.readouterr().err == f"ftlab: error: {path}: {message}\n"
