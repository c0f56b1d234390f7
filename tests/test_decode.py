"""Decoders as generators: ring-buffer records give the events the live Python paths make, on both
arches; a recording replays byte for byte as the direct trace (its file format: test_record_file.py);
the output layer stands alone."""

import ast
from pathlib import Path

import pytest

from fixtures import catalog
from helpers import ftlab
from tracers import FunctionGraphTracer, FunctionTracer, Lab
from tracers.cli.main import main
from tracers.kernel_version import KernelVersion
from tracers.output.decode import DECODERS, StackDepth
from tracers.output.sinks import CountSink, ListSink

FIELDS = (
    "tracer",
    "type",
    "ip",
    "parent_ip",
    "depth",
    "ts",
    "args",
    "regs_kind",
    "regs",
    "missing",
    "retval",
    "duration",
)


def _key(ev):
    return tuple(getattr(ev, f) for f in FIELDS)


def _python_path(lab, kind, func, args, **kw):
    sink = ListSink()
    with kind(lab, sink, ring=False, **kw):
        lab.call(func, *args)
    return [_key(e) for e in sink.events]


def _records(lab, kind, func, args, **kw):
    """The raw chunks the ring buffer hands its consumer: nothing is decoded while tracing."""
    chunks = []
    with kind(lab, CountSink(), ring=True, consumer=chunks.append, **kw) as tracer:
        lab.call(func, *args)
    assert tracer.sink.n == 0
    return chunks


@pytest.mark.parametrize(
    "kind,kw",
    [(FunctionTracer, {}), (FunctionGraphTracer, {}), (FunctionGraphTracer, {"max_depth": 2})],
    ids=["function", "graph", "depth2"],
)
def test_decoded_records_are_the_python_path_events(arch, kind, kw):
    # a small buffer, so a call's records come in many chunks and the decoder's depth spans them
    ring, plain = Lab.open(catalog.DEFAULT, arch, ring_records=4), Lab.open(catalog.DEFAULT, arch)
    most = 0
    for f in catalog.FUNCTIONS.values():
        for args in f.examples:
            chunks = _records(ring, kind, f.name, args, **kw)
            decoder = DECODERS[kind.name](ring.karch)
            decoded = [_key(e) for chunk in chunks for e in decoder.events(chunk)]
            assert decoded == _python_path(plain, kind, f.name, args, **kw) and decoded, (f.name, args)
            # one chunk or many: the same events
            whole = DECODERS[kind.name](ring.karch)
            assert [_key(e) for e in whole.events(b"".join(chunks))] == decoded
            most = max(most, len(chunks))
    assert most > 1


@pytest.mark.parametrize("kernel", ["6.17", "6.18", "7.0"])
def test_graph_exit_records_hold_the_releases_exit_fields(arch, kernel):
    """The exit record holds what the release's return_to_handler saved (x86: sp from 6.18,
    20a0bc10272f): the guest code, which copies the fields the record's layout names, and the
    Python path write the same events, and the decoder reads them back with those fields."""
    release = KernelVersion.parse(kernel)
    ring = Lab.open(catalog.DEFAULT, arch, ring_records=4, kernel=release)
    plain = Lab.open(catalog.DEFAULT, arch, kernel=release)
    chunks = _records(ring, FunctionGraphTracer, "fib", (6,))
    decoded = [e for chunk in chunks for e in DECODERS["function_graph"](ring.karch, release).events(chunk)]
    assert [_key(e) for e in decoded] == _python_path(plain, FunctionGraphTracer, "fib", (6,))
    exits = [e for e in decoded if e.type == "exit"]
    assert exits and all(tuple(e.regs) == ring.fgraph.exit_saved for e in exits)
    assert ("sp" in ring.fgraph.exit_saved) == (arch == "x86_64" and kernel != "6.17")


def test_stack_depth_from_the_saved_sp():
    """The stack grows down: an entry at or above an earlier entry's sp means that one returned."""
    depth = StackDepth()
    assert [depth(sp) for sp in (0x100, 0xF0, 0xE0, 0xF0, 0xE0, 0x100, 0xF8, 0xF8)] == [0, 1, 2, 1, 2, 0, 1, 1]


CASES = [
    ("function", "fib(9)", [], []),
    ("function", "chain_a(10)", ["--filter", "chain_*", "--notrace", "chain_b"], []),
    ("function_graph", "fib(8)", ["--max-graph-depth", "3"], ["--funcgraph-tail"]),
    ("function_graph", "tail_a(5)", [], ["--funcgraph-retval"]),
    ("function_graph", 'crc32_bitwise(0, b"123456789", 9)', [], []),
]


CASES += [  # the exit record by release: x86's return_to_handler saves sp from 6.18 (20a0bc10272f)
    ("function_graph", "fib(6)", ["--kernel", kernel], ["--funcgraph-retval"]) for kernel in ("6.17", "6.18")
]


@pytest.mark.parametrize(
    "tracer,call,options,view", CASES, ids=[f"{c[0]}-{c[1][:6]}-{'-'.join(c[2])[:16]}" for c in CASES]
)
def test_replay_is_the_direct_trace_byte_for_byte(capsys, arch, tmp_path, tracer, call, options, view):
    path = str(tmp_path / "trace.ftl")
    assert (
        main(["record", "--arch", arch, "funcs", call, "--tracer", tracer, "-o", path, "--buffer-size", "8", *options])
        == 0
    )
    assert capsys.readouterr() == ("", "")
    for fmt in ("text", "json"):
        view_options = view if fmt == "text" else []
        argv = ["trace", "--arch", arch, "funcs", call, "--tracer", tracer, "--format", fmt]
        direct = ftlab(capsys, *argv, *options, *view_options)
        assert ftlab(capsys, "replay", path, "--format", fmt, *view_options) == direct
        assert direct.count("\n") >= 3


def test_the_output_layer_imports_no_tracer_and_no_cli():
    root = Path(__file__).parent.parent / "tracers" / "output"
    for source in root.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert not module.startswith(("..builtin", "..cli", "tracers.builtin", "tracers.cli")), source
                assert node.col_offset == 0, f"{source.name}: a function-local import"
