"""What every tracer shares: a sink, a trace clock, verify mode, and a `with` block that runs it."""

from __future__ import annotations

from ..output.events import COUNTERS, with_entries_written
from .trace_clock import CLOCKS


class Tracer:
    name = "tracer"

    def __init__(self, lab, sink, clock: str = "counter", verify: bool = False):
        self.lab, self.sink, self.verify = lab, sink, verify
        self.clock_name = clock
        self.clock = None
        self.counters = COUNTERS[self.name]  # event type -> the counter it advances
        self.counts = dict.fromkeys(self.counters.values(), 0)  # the events, at the end of the trace
        self.ring_losses: dict[str, int] = {}  # what a full ring buffer lost, when it lost any
        self.mismatching = 0
        self.snapshots = 0

    def __enter__(self):
        self.clock = CLOCKS[self.clock_name](self.lab.machine)
        self.start()  # first: a refused registration is an error before any output
        self.sink.begin(self.name, self.clock_name)
        return self

    def __exit__(self, *exc):
        self.stop()
        self.clock.close()
        self.sink.end(self.summary())

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def ring_start(self, mode: str, consumer) -> None:
        """Before a ring-buffer tracer attaches: an empty buffer, records going to consumer."""
        self.lab.ring_buffer.reset(mode, consumer)

    def decode(self, chunk: bytes) -> None:
        """The ring-buffer consumer while tracing: the records, through the tracer's decoder (a
        ring-buffer tracer's self.decoder), as the events its Python path would have made."""
        for event in self.decoder.events(chunk):
            self.emit(event)

    def ring_stop(self) -> None:
        """After it detaches: the rest of the records out, and what overwrite/drop lost counted."""
        rb = self.lab.ring_buffer
        rb.drain()
        # one of the two at most: overwrite mode replaces records, drop mode refuses them
        self.ring_losses = {name: n for name, n in (("lost", rb.lost), ("overwritten", rb.overwritten)) if n}

    def emit(self, event) -> None:
        self.counts[self.counters[event.type]] += 1
        if event.verification is not None:
            self.snapshots += 1
            self.mismatching += bool(event.verification.mismatch)
        self.sink.event(event)

    def summary(self) -> dict:
        """What the trace ends with: its counters, and with verify mode the snapshot tally."""
        out = {"counters": with_entries_written({**self.counts, **self.stats()})}
        if self.verify:
            out["verify"] = {"snapshots": self.snapshots, "mismatching": self.mismatching}
        return out

    def stats(self) -> dict:
        """The counters no event shows (a recording keeps them for its replay)."""
        return dict(self.ring_losses)


class RingTracer(Tracer):
    """A tracer with a guest ring-buffer path (function, function_graph). With the counter clock and
    no verify mode it records through the ring buffer (`ring`), whose records its decoder turns into
    events; otherwise (insns clock, verify mode) a Python callback builds each event, with the same
    result. A subclass makes its ops in `__init__`, attaches and detaches them, and names the
    mechanisms whose snapshots its events carry (`verified`)."""

    decoder_class: type

    def __init__(
        self,
        lab,
        sink,
        clock: str = "counter",
        filters=(),
        notrace=(),
        verify: bool = False,
        ring: bool | None = None,
        buffer_mode: str = "stream",
        consumer=None,
    ):
        super().__init__(lab, sink, clock, verify)
        self.ring = (clock == "counter" and not verify) if ring is None else ring
        self.buffer_mode, self.consumer = buffer_mode, consumer or self.decode
        self.filters, self.notrace = list(filters), list(notrace)
        self.decoder = self.decoder_class(lab.karch)  # the ring buffer's records as events

    def select(self, ops) -> None:
        """set_ftrace_filter and set_ftrace_notrace on the tracer's ftrace_ops."""
        if self.filters:
            self.lab.ftrace.set_filter(ops, self.filters)
        if self.notrace:
            self.lab.ftrace.set_notrace(ops, self.notrace)

    def verified(self) -> tuple:
        """The cores whose snapshots the events carry, held while verifying."""
        raise NotImplementedError

    def attach(self) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self.ring:
            self.ring_start(self.buffer_mode, self.consumer)
        if self.verify:
            self.lab.verify.acquire(*self.verified())
        self.attach()

    def stop(self) -> None:
        self.detach()
        if self.verify:
            self.lab.verify.release(*self.verified())
        if self.ring:
            self.ring_stop()
