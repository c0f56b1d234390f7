"""The kernel's tracing layer over the emulated machine: ftrace core, tracers, snapshots, CLI."""
from .ftrace import Ftrace, FtraceOps, OpsFlag
from .function import FunctionTracer
from .lab import Lab

__all__ = ["Ftrace", "FtraceOps", "OpsFlag", "FunctionTracer", "Lab"]
