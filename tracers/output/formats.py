"""The sink for each --format of trace, replay and bpf (sinks.py and chrome.py hold the sinks)."""

from __future__ import annotations

from emulator import FtlabError
from emulator.symbols import SymbolTable

from ..kernel_version import KernelVersion
from .chrome import ChromeSink
from .decode import FunctionDecoder, GraphDecoder
from .sinks import FoldedSink, GraphTextSink, JsonSink, TextSink, model_line

FORMATS = ("text", "json")
TRACE_FORMATS = (*FORMATS, "folded", "chrome")  # what a trace (and its replay) can also be written as


def make_sink(fmt: str, tracer: str, out, symbols: SymbolTable, arch: str, kernel: KernelVersion, **options):
    """The sink for a format; `text` is the tracer's own trace-file format, under one line naming
    the release and arch modelled; JSON names them in its records. `chrome` adds the trace to
    options' `document` (a ChromeDocument the caller writes), or without one writes its own."""
    if fmt == "json":
        return JsonSink(out, symbols, arch, kernel)
    if fmt == "chrome":
        return ChromeSink(
            out, symbols, arch, kernel, options.get("document"), options.get("retval", False), options.get("args")
        )
    if fmt == "folded":
        if tracer != "function_graph":
            raise FtlabError(f"--format folded needs the function_graph tracer's entries and exits, not {tracer}'s")
        return FoldedSink(out, symbols, options.get("root", ""))
    model = model_line(arch, kernel)
    if tracer == "function_graph":
        return GraphTextSink(out, symbols, kernel=kernel, model=model, **options)
    return TextSink(out, symbols, model)


def bulk_writer(decoder, sink):
    """chunk -> the events written by type ({'entry': n, ...}), where the sink writes the decoder's
    records in bulk, no Event each (the function tracer's text; function_graph's text without
    funcgraph-args), else None. Chosen once per trace, before it starts."""
    if isinstance(decoder, FunctionDecoder) and isinstance(sink, TextSink):
        return lambda chunk: sink.records(chunk, decoder)
    if isinstance(decoder, GraphDecoder) and isinstance(sink, GraphTextSink) and sink.args is None:
        return lambda chunk: sink.records(chunk, decoder)
    return None


def probe_bulk_writer(decoder, sink, each):
    """(chunk) -> the events written by type, where the sink writes the guest probe records' text in
    bulk (a ProbeDecoder's, into the nop tracer's text), no Event each but for the records each(record)
    writes in their place (a Python handler's events); else None. Chosen once per trace, before it starts."""
    if isinstance(sink, TextSink):
        return lambda chunk: sink.probe_records(chunk, decoder, each)
    return None
