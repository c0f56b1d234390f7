"""Trace clocks, named as the kernel's trace_clock options. Both are deterministic: emulated code
has no real time, and host time would make the same trace differ from run to run."""


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


CLOCKS = {c.name: c for c in (CounterClock, InsnsClock)}
