"""A probe definition added to an event that already exists: the kernel appends it (one event,
several probes) or refuses it, as register_trace_kprobe() / append_trace_kprobe()
(kernel/trace/trace_kprobe.c) and register_trace_fprobe() / append_trace_fprobe()
(kernel/trace/trace_fprobe.c) decide, with their error_log texts."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .spec import DIFF_ARG_TYPE, DIFF_PROBE_TYPE, EVENT_EXIST, SAME_PROBE, ProbeSpec, ProbeSpecError


def check_append(spec: ProbeSpec, defined: Sequence[ProbeSpec]) -> None:
    """Refuse spec if the kernel would, given the probes already defined; else it joins its event."""
    probes = [d for d in defined if (d.group, d.event) == (spec.group, spec.event)]
    if not probes:
        return
    to = probes[0]
    if (spec.kind == "f") != (to.kind == "f"):  # find_trace_kprobe/fprobe finds no such probe:
        _fail(spec, 0, EVENT_EXIST)  # the event call's name is taken (trace_probe_register_event_call)
    if spec.is_return != to.is_return:
        _fail(spec, 0, DIFF_PROBE_TYPE)
    differ = _compare_arg_type(spec, to)
    if differ:
        _fail(spec, differ + 1, DIFF_ARG_TYPE)  # argv[0] is the head, argv[1] the probe point
    # trace_kprobe_has_same_kprobe: the same symbol and offset; trace_fprobe_has_same_fprobe: the
    # same symbol; then every argument's expression (comm) the same
    if any(_point(d) == _point(spec) and [a.fetch for a in d.args] == [a.fetch for a in spec.args] for d in probes):
        _fail(spec, 0, SAME_PROBE)


def _point(spec: ProbeSpec) -> tuple:
    return (spec.symbol,) if spec.kind == "f" else (spec.symbol, spec.offset)


def _compare_arg_type(a: ProbeSpec, b: ProbeSpec) -> int:
    """trace_probe_compare_arg_type() (trace_probe.c): 0 if both have the same arguments by name and
    type, else the 1-based position of the first that differs (one past the shorter list)."""
    if len(a.args) != len(b.args):
        return min(len(a.args), len(b.args)) + 1
    return next(
        (i + 1 for i, (x, y) in enumerate(zip(a.args, b.args, strict=True)) if (x.name, x.type) != (y.name, y.type)), 0
    )


def _fail(spec: ProbeSpec, index: int, message: str) -> None:
    """trace_probe_log_err(0, ...) at argv[index]; past the last word, one space after the end."""
    words = [(m.group(), m.start()) for m in re.finditer(r"\S+", spec.text)]
    if index < len(words):
        token, pos = words[index]
    else:
        token, pos = "", len(spec.text.rstrip()) + 1
    raise ProbeSpecError(spec.text, message, token, pos + 1)
