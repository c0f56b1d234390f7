"""The kernel's tracing layer over the emulated machine. The Python API, in data-flow order:

tracers.arch       the kernel's arch/ code, one package per arch (layouts, sites, trampolines)
tracers.core       the arch-neutral mechanisms: ftrace, fgraph, rethook, kprobes, fprobe ...
tracers.builtin    the tracers on them: function, function_graph, probe events
tracers.probe_events   the dynamic_events language
tracers.output     events, sinks, the record file format
tracers.cli        the ftlab command
"""

from .builtin.function import FunctionTracer
from .builtin.function_graph import FunctionGraphTracer
from .core.fgraph import FgraphOps
from .core.fprobe import Fprobe
from .core.ftrace import Ftrace, FtraceOps, OpsFlag
from .core.kprobes import Kprobe
from .core.kretprobe import Kretprobe
from .lab import Lab

__all__ = [
    "Fprobe",
    "FgraphOps",
    "Ftrace",
    "FtraceOps",
    "FunctionGraphTracer",
    "FunctionTracer",
    "Kprobe",
    "Kretprobe",
    "Lab",
    "OpsFlag",
]
