"""Trace events: small records, formatted only by a sink."""
from __future__ import annotations

from dataclasses import dataclass

from .regs import Verification


@dataclass(slots=True)
class Event:
    tracer: str
    type: str                     # 'entry'
    ip: int                       # the patch site (the kernel's ip)
    parent_ip: int
    depth: int
    ts: int
    args: tuple[int, ...]         # the first six arguments, from the snapshot
    regs_kind: str                # 'ftrace_regs' ...
    regs: dict[str, int]          # the fields the mechanism captured
    missing: tuple[str, ...]      # the registers it does not capture
    verification: Verification | None = None     # with verify mode: captured vs true

    @property
    def mismatch(self) -> list[str] | None:
        return None if self.verification is None else self.verification.mismatch
