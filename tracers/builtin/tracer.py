"""What every tracer shares: a sink, a trace clock, verify mode, and a `with` block that runs it."""

from __future__ import annotations

import itertools
import struct

from emulator import FtlabError

from ..output.events import COUNTERS, with_entries_written
from ..output.formats import bulk_writer
from ..output.records import EVENT_RECORD, REC_EVENT
from .trace_clock import CLOCKS, GuestInsnsClock

EVENT_KEY = struct.Struct("<Q")


class PendingEvents(dict):
    """Events Python made whose place in the ring buffer is a REC_EVENT record, by the record's key:
    the kernel writes such an event (a probe event's) into the buffer; the lab writes a record for
    its place and timestamp and keeps the event here until a decoder reaches the record."""

    def __init__(self, ring_buffer):
        super().__init__()
        self._rb, self._keys = ring_buffer, itertools.count()

    def write(self, event) -> None:
        """The event's record, stamped by the buffer's clock (which the guest's records share); a
        full buffer loses or overwrites it as it would any other record."""
        key = next(self._keys)
        ts = self._rb.write(REC_EVENT, key)
        if ts is not None:
            event.ts = ts
            self[key] = event


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
        self.events = None  # probe events written into this trace (add_events)

    def make_clock(self):
        """The trace clock, made as the trace starts."""
        return CLOCKS[self.clock_name](self.lab.machine)

    def add_events(self, events) -> None:
        """Probe events in this tracer's trace, as the kernel's dynamic events enabled alongside
        current_tracer: they go into the tracer's buffer in the order they happen, stamped by its
        clock, and its trace prints them among its own lines. `events` is a ProbeEventTracer on the
        same sink; it starts after this tracer, stops before it, and this trace's summary counts both."""
        self.events = events
        events.write = self.write_event

    def write_event(self, event) -> None:
        """A probe event, as it happens: straight out, when nothing is buffered."""
        self.events.emit(event)

    def __enter__(self):
        self.clock = self.make_clock()
        self.start()  # first: a refused registration is an error before any output
        if self.events is not None:
            self.events.clock = self.clock  # one trace clock
            try:
                self.events.start()
            except BaseException:
                self.events.stop()
                self.stop()
                self.clock.close()
                raise
        self.sink.begin(self.name, self.clock_name)
        return self

    def __exit__(self, exc_type, exc, tb):
        """Detach, then end the trace: what was recorded is written out whatever stopped the run, and
        a trace stopped by an error ends by saying why (the summary's `stopped`)."""
        stopped = exc
        try:
            if self.events is not None:
                self.events.stop()
            self.stop()
            self.clock.close()
        except BaseException as err:
            stopped = stopped or err
            raise
        finally:
            summary = self.summary()
            if stopped is not None:
                summary["stopped"] = stop_reason(stopped)
            self.sink.end(summary)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def count_written(self, written: dict[str, int]) -> None:
        """What a bulk writer wrote ({event type: lines}), into the trace's counters."""
        for type_, n in written.items():
            self.counts[self.counters[type_]] += n

    def emit(self, event) -> None:
        self.counts[self.counters[event.type]] += 1
        if event.verification is not None:
            self.snapshots += 1
            self.mismatching += bool(event.verification.mismatch)
        self.sink.event(event)

    def summary(self) -> dict:
        """What the trace ends with: its counters (and its probe events'), and with verify mode the
        snapshot tally."""
        tracers = (self,) if self.events is None else (self, self.events)
        counts = dict(self.counts)
        if self.events is not None:
            # entries in the tracer's buffer: counted with its own where its header counts them
            # (function), else on their own
            key = "entries-in-buffer" if "entries-in-buffer" in counts else "events"
            counts[key] = counts.get(key, 0) + sum(self.events.counts.values())
        out = {"counters": with_entries_written({**counts, **self.stats()})}
        if self.events is not None:
            out["probes"] = self.events.probe_counts()
        if any(t.verify for t in tracers):
            out["verify"] = {
                "snapshots": sum(t.snapshots for t in tracers),
                "mismatching": sum(t.mismatching for t in tracers),
            }
        return out

    def stats(self) -> dict:
        """The counters no event shows (a recording keeps them for its replay)."""
        return dict(self.ring_losses)


def stop_reason(err: BaseException) -> str:
    """Why a trace ended early, in the words the error's own line uses."""
    if isinstance(err, FtlabError):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return f"internal error: {type(err).__name__}: {err}"


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
        # the ring path where the guest can keep the clock: the counter, or instructions counted by
        # the machine's native block hook
        guest_clock = clock == "counter" or (clock == "insns" and lab.machine.counts_natively)
        self.ring = (guest_clock and not verify) if ring is None else ring
        self.buffer_mode, self.consumer = buffer_mode, consumer or self.decode
        self.filters, self.notrace = list(filters), list(notrace)
        # the ring buffer's records as events
        self.decoder = self.decoder_class(lab.karch, lab.kernel, lab.ftrace.uncaptured())
        self._bulk = bulk_writer(self.decoder, sink)  # chunk -> lines written, or None: an Event each
        self.pending = PendingEvents(lab.ring_buffer)  # probe events whose records are in the buffer

    def make_clock(self):
        """Through the ring buffer, the guest keeps the clock: instructions, too, where the
        machine's native hook counts them (GuestInsnsClock)."""
        if self.ring and self.clock_name == GuestInsnsClock.name:
            return GuestInsnsClock(self.lab.ring_buffer)
        return super().make_clock()

    def ring_start(self, mode: str, consumer) -> None:
        """Before a ring-buffer tracer attaches: an empty buffer, held by the tracer with the other
        ring tracers (function and function_graph write the same records; refused while another
        user, such as batched fprobes, holds it), records going to consumer."""
        self.lab.ring_buffer.claim(f"the {self.name} tracer", mode, consumer, group="ring tracers")

    def decode(self, chunk: bytes) -> None:
        """The ring-buffer consumer while tracing: the records, through the tracer's decoder, as the
        events its Python path would have made; or, where the sink writes them in bulk from the
        records' columns (bulk_writer), as its lines straight away."""
        if self._bulk is not None:
            self.count_written(self._bulk(chunk))
            return
        for event in self.decoder.events(chunk):
            self.emit(event)

    def ring_stop(self) -> None:
        """After it detaches: the rest of the records out, and what overwrite/drop lost counted."""
        rb = self.lab.ring_buffer
        rb.drain()
        rb.release(f"the {self.name} tracer")
        self.pending.clear()  # probe events whose records were overwritten
        # one of the two at most: overwrite mode replaces records, drop mode refuses them
        self.ring_losses = {name: n for name, n in (("lost", rb.lost), ("overwritten", rb.overwritten)) if n}

    def add_events(self, events) -> None:
        if self.ring and self.consumer != self.decode:
            raise FtlabError("probe events cannot be recorded: a recording holds the tracer's records only")
        super().add_events(events)
        if self.ring:
            self.consumer = self.decode_with_events

    def write_event(self, event) -> None:
        """Through the ring buffer, when the tracer records through it: a record there keeps the
        event's place among the tracer's records (the guest code's too) and stamps it with the
        buffer's clock, which the tracer's records share; Python keeps the event itself. A full
        buffer loses or overwrites it as it would the tracer's own."""
        if not self.ring:
            return super().write_event(event)
        self.pending.write(event)

    def decode_with_events(self, chunk: bytes) -> None:
        """The ring-buffer consumer when probe events share the buffer: runs of the tracer's records
        through its decoder, each probe event's record replaced by its event, in buffer order."""
        size = self.decoder.rec.size
        types = memoryview(chunk).cast("Q")[EVENT_RECORD.index("type") :: size // 8].tolist()
        start = 0
        for i, type_ in enumerate(types):
            if type_ != REC_EVENT:
                continue
            if start < i:
                self.decode(chunk[start * size : i * size])
            [key] = EVENT_KEY.unpack_from(chunk, i * size + EVENT_RECORD.offsets["key"])
            self.events.emit(self.pending.pop(key))
            start = i + 1
        if start < len(types):
            self.decode(chunk[start * size :])

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
