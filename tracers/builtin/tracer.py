"""What every tracer shares: a sink, a trace clock, verify mode, and a `with` block that runs it."""
from __future__ import annotations

from .trace_clock import CLOCKS

NR_ARGS = 6          # arguments recorded per entry event


class Tracer:
    name = "tracer"

    def __init__(self, lab, sink, clock: str = "counter", verify: bool = False):
        self.lab, self.sink, self.verify = lab, sink, verify
        self.clock_name = clock
        self.clock = None
        self.counts: dict[str, int] = {}       # shown at the end of the trace
        self.mismatching = 0
        self.snapshots = 0

    def __enter__(self):
        self.clock = CLOCKS[self.clock_name](self.lab.machine)
        self.sink.begin(self.name, self.clock_name)
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        self.clock.close()
        self.summary_seen = self.summary()
        self.sink.end(self.summary_seen)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def ring_start(self, mode: str, consumer) -> None:
        """Before a ring-buffer tracer attaches: an empty buffer, records going to consumer."""
        self.lab.ring_buffer.reset(mode, consumer)

    def ring_stop(self) -> None:
        """After it detaches: the rest of the records out, and what overwrite/drop lost counted."""
        rb = self.lab.ring_buffer
        rb.drain()
        if rb.lost or rb.overwritten:
            self.counts.update(lost=rb.lost, overwritten=rb.overwritten)

    def emit(self, event) -> None:
        if event.verification is not None:
            self.snapshots += 1
            self.mismatching += bool(event.verification.mismatch)
        self.sink.event(event)

    def summary(self) -> dict:
        """What the trace ends with: its counters, and with verify mode the snapshot tally."""
        out = {"counters": dict(self.counts)}
        if self.verify:
            out["verify"] = {"snapshots": self.snapshots, "mismatching": self.mismatching}
        return out
