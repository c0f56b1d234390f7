"""`ftlab check`: a conformance verdict for one object. Every function's calls run untraced, then
under each mechanism that applies, and the lab checks what a kernel developer changing a trampoline
or a compiler developer changing patch-site codegen needs to know held: the results, every
snapshot against the true registers, every event counted, the text restored, no state left."""

from .check import check_object, check_path
from .report import ObjectReport, Row

__all__ = ["ObjectReport", "Row", "check_object", "check_path"]
