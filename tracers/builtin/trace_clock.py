"""Trace clocks, named as the kernel's trace_clock options. Both are deterministic: emulated code
has no real time, and host time would make the same trace differ from run to run."""

MASK64 = (1 << 64) - 1


class CounterClock:
    """`counter`: a count that rises by one per event (trace_clock_counter)."""

    name = "counter"
    unit = "events"

    def __init__(self, machine):
        self._n = 0

    def now(self) -> int:
        self._n += 1
        return self._n

    def close(self) -> None:
        pass


class InsnsClock:
    """`insns`: emulated instructions executed since the trace started, up to the instruction
    where the event is taken (the ops dispatch). Counted by a block hook with per-block
    instruction counts, which slows emulation; no per-instruction hook is used."""

    name = "insns"
    unit = "insns"

    def __init__(self, machine):
        self._m = machine
        machine.count_instructions(True)
        self._start = machine.insns

    def now(self) -> int:
        # Events are taken at the first instruction of a block (the dispatch is a call target).
        return self._m.insns_before(self._m.reg(self._m.arch.pc)) - self._start

    def close(self) -> None:
        self._m.count_instructions(False)


class GuestInsnsClock:
    """`insns` for the tracers that record through the guest ring buffer: the machine's native
    block hook keeps the buffer's clock word at the instructions executed so far, and the guest
    stamps each record with it, so no Python runs per block or per event. An event's ts is the
    instructions executed before the block that reserved its record (a few past the dispatch,
    where InsnsClock takes it)."""

    name = "insns"
    unit = "insns"

    def __init__(self, ring_buffer):
        self._rb = ring_buffer
        ring_buffer.count_insns(True)

    def now(self) -> int:
        """What the guest would stamp a record with now (Python's own records: probe events)."""
        return (self._rb.clock + 1) & MASK64

    def close(self) -> None:
        self._rb.count_insns(False)


CLOCKS = {c.name: c for c in (CounterClock, InsnsClock)}
