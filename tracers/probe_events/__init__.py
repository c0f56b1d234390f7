"""The kernel's dynamic_events probe language, self-contained: spec (what a definition is, the
kernel's limits and error texts), parse, append (several probes on one event), fetch (evaluation
at a hit) and format."""

from .append import check_append
from .fetch import evaluate
from .format import format_args, format_value
from .parse import parse
from .spec import FAULT, TYPES, BtfProto, Fetch, FetchArg, FetchContext, FetchFault, ProbeSpec, ProbeSpecError

__all__ = [
    "FAULT",
    "TYPES",
    "BtfProto",
    "check_append",
    "Fetch",
    "FetchArg",
    "FetchContext",
    "FetchFault",
    "ProbeSpec",
    "ProbeSpecError",
    "evaluate",
    "format_args",
    "format_value",
    "parse",
]
