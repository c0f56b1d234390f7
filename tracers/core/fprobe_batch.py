"""Batched fprobe handlers (issue #16): `Fprobe(entry_handler, exit_handler, batched=True)` is an
fprobe whose Python handlers only observe, so a hit need not stop the emulator.

Its hits run guest handlers (tracers/arch/<arch>/fprobe_batched.S) that write one ring-buffer
record each: the fprobe, ip, ret_ip, the CPU's flags word, the entry data's address, at entry the
return address ftrace_regs_get_return_address reads, and the ftrace_regs fields the handler was
given (the ones a live handler's FtraceRegs reads). The Python handlers are called later, in the
order of the hits, from the records, with a read-only snapshot decoded from each (RecordedRegs),
when the ring buffer drains:

* when it is full (from the guest's rb_reserve, in the middle of the run);
* at the end of each `Lab.call` / `Lab.run_calls` call that returns (a call that fails leaves its
  hits' records for the next drain; `Machine.call` does not drain);
* at `Fprobes.flush()`, and at `Fprobes.unregister` of a batched fprobe (before it goes).

What a live handler could do and a batched one cannot, refused rather than pretended:

* the entry handler's return value cannot skip the exit (the guest recorded the hit and let the
  exit run long before the handler is called): a true return value is a FtlabError at the drain;
* the snapshot is read-only (set_* is a FtlabError: the hit has returned), and a register or
  stack word the record lacks is a FtlabError naming what the record holds, never a value;
* entry_data (entry_data_size > 0) is a Python bytearray of that size, zeroed, the same object
  for an entry and its exit (not the guest address a live handler gets);
* verify() is None: nothing runs in Python at the hit to take the truth.

The lab's one ring buffer holds the records, so batched fprobes hold it while any is registered
(RingBuffer.claim): registering one while a tracer traces through the buffer is refused, and so is
starting such a tracer while one is registered. Batched fprobes need the fgraph design (6.14+).
Where the registry's dispatch is in Python (a disabled fprobe, another registry using the guest
dispatch), the Python dispatch writes the same records (write_entry / write_exit), in order with
the guest's. nmissed is counted as for any fprobe: the records add no way to miss (the buffer
streams, it never drops).

A batched handler runs outside the hit it records: a traced function it calls is traced like any
other call, and hits during a drain (a handler calling lab.call) are handled after the records
being drained, in order. A handler that raises ends its drain: the error goes out (of Lab.call, or
of the run whose full buffer drained), and that drain's later records are not handled.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from emulator import FtlabError
from emulator.layout import Layout

from ..kernel_version import MODELLED, KernelVersion
from .regs import missing_registers
from .ring_buffer import RECORD_HEADER, fields_macro

# the records' types: after the tracers' (records.py: 1-3) and the probe events' (4, 5)
REC_FPROBE_ENTRY, REC_FPROBE_EXIT = 6, 7
HEAD = ("key", "ip", "ret_ip", "flags", "data")
HOLDER = "a batched fprobe"  # their name as the ring buffer's holder
_FIELDS = RECORD_HEADER.nr_words + len(HEAD)  # the exit's fields; the entry's after retaddr
TYPE, TS, KEY, IP, RET_IP, FLAGS, DATA = range(_FIELDS)
RETADDR = _FIELDS


@dataclass(frozen=True)
class BatchRecords:
    """The batched handlers' records on one arch in one release: the entry's holds every member
    ftrace_caller stores, the exit's every member return_to_handler saves."""

    entry: Layout
    exit: Layout
    saved: tuple[str, ...]
    exit_saved: tuple[str, ...]

    @classmethod
    def of(cls, karch, kernel: KernelVersion = MODELLED) -> BatchRecords:
        saved, exit_saved = karch.ftrace_regs_saved, karch.fgraph.exit_saved(kernel)
        regs = [tuple(f"regs_{m}" for m in members) for members in (saved, exit_saved)]
        return cls(
            RECORD_HEADER.extend("fprobe batched entry", (*HEAD, "retaddr", *regs[0])),
            RECORD_HEADER.extend("fprobe batched exit", (*HEAD, *regs[1])),
            saved,
            exit_saved,
        )

    @property
    def size(self) -> int:
        return max(self.entry.size, self.exit.size)

    def asm_constants(self) -> dict[str, int]:
        return {
            **RECORD_HEADER.asm_constants("HDR_"),
            **{f"FBH_{name.upper()}": 8 * word for name, word in zip(HEAD, range(KEY, _FIELDS), strict=True)},
            **self.entry.asm_constants("FB_ENT_"),
            **self.exit.asm_constants("FB_RET_"),
            "REC_FPROBE_ENTRY": REC_FPROBE_ENTRY,
            "REC_FPROBE_EXIT": REC_FPROBE_EXIT,
        }

    def asm_macros(self) -> str:
        return fields_macro("batched_entry_fields", self.saved, "FB_ENT") + fields_macro(
            "batched_exit_fields", self.exit_saved, "FB_RET"
        )


@dataclass(frozen=True)
class _Shape:
    """What a record's words mean for one kind of snapshot (entry or exit at one site)."""

    at: str  # "entry" or "exit"
    recorded: dict[str, int]  # member -> its word in the record
    saved: tuple[str, ...]  # the members captured there
    regs: dict[str, int]  # pt_regs name of a captured member -> its word
    missing: tuple[str, ...]
    args: tuple[str, ...]  # the argument registers' members
    irqs_masked: Callable[[int], bool]  # Machine.irqs_masked


class RecordedRegs:
    """A batched fprobe handler's ftrace_regs: read-only, decoded from its hit's record, with the
    kernel's ftrace_regs_* accessors (without the prefix) as FtraceRegs has them. A register the
    record lacks, a stack word, or any write is a FtlabError. Also: `ts` (the ring buffer's clock
    at the hit), `cpu_flags` (the flags word read at the hit: the guest's x86 pushfq or arm64
    DAIF; where the Python dispatch wrote the record, the flags register) and `irqs_off`."""

    kind = "ftrace_regs"
    __slots__ = ("_k", "_shape", "_words")

    def __init__(self, karch, shape: _Shape, words: tuple[int, ...]):
        self._k, self._shape, self._words = karch, shape, words

    @property
    def ts(self) -> int:
        return self._words[TS]

    @property
    def cpu_flags(self) -> int:
        return self._words[FLAGS]

    @property
    def irqs_off(self) -> bool:
        return self._shape.irqs_masked(self._words[FLAGS])

    def _lacks(self, what: str) -> FtlabError:
        shape = self._shape
        return FtlabError(
            f"fprobe (batched): {what} is not in the {shape.at} record, which holds "
            f"{', '.join(shape.recorded)}{' and the return address' if shape.at == 'entry' else ''}"
        )

    def _read_only(self, *_args) -> None:
        raise FtlabError(
            "fprobe (batched): the snapshot is read-only: the hit it records has returned "
            "(a handler that changes registers needs Fprobe(batched=False))"
        )

    set_reg = set_return_value = set_instruction_pointer = set_return_address = _read_only

    def reg(self, reg: str) -> int:
        """The saved value of a pt_regs-named register the record captured."""
        at = self._shape.regs.get(reg)
        if at is None:
            raise self._lacks(reg)
        return self._words[at]

    def member(self, name: str) -> int:
        """A struct member's word as the record copied it, captured or not."""
        at = self._shape.recorded.get(name)
        if at is None:
            raise self._lacks(name)
        return self._words[at]

    @property
    def saved(self) -> tuple[str, ...]:
        return self._shape.saved

    @property
    def fields(self) -> dict[str, int]:
        """What the mechanism captured, by the struct's member names."""
        recorded, words = self._shape.recorded, self._words
        return {m: words[recorded[m]] for m in self._shape.saved}

    @property
    def missing(self) -> list[str]:
        """The pt_regs registers the snapshot does not hold."""
        return list(self._shape.missing)

    def verify(self) -> None:
        """No truth: nothing ran in Python at the hit to take it."""
        return None

    def get_argument(self, n: int) -> int:
        """Argument n (0-based) as ftrace_regs_get_argument reads it: the register's member (x86's
        arguments past the sixth are stack words, which the record does not hold; arm64's past x7
        read 0, as the kernel's accessor)."""
        args = self._shape.args
        if n < len(args):
            return self.member(args[n])
        if self._k.ftrace_regs_stack_args:
            raise self._lacks(f"argument {n} (a stack word)")
        return 0

    def get_return_value(self) -> int:
        return self.reg(self._k.cpu.ret_regs[0])

    def get_instruction_pointer(self) -> int:
        return self.reg(self._k.cpu.pc)

    def get_stack_pointer(self) -> int:
        return self.reg(self._k.cpu.sp)

    def get_frame_pointer(self) -> int:
        return self.reg(self._k.cpu.fp)

    def get_return_address(self) -> int:
        """At entry, what ftrace_regs_get_return_address read at the hit (x86: the word at sp,
        arm64: lr); at an exit, arm64's lr if the record holds it, else a FtlabError."""
        shape, lr = self._shape, self._k.cpu.lr
        if shape.at == "entry":
            return self._words[RETADDR]
        if lr and lr in shape.regs:
            return self._words[shape.regs[lr]]
        raise self._lacks(f"the return address ({lr or 'the word at sp'})")

    def ftrace_get_regs(self) -> None:
        raise self._lacks("a full pt_regs (ftrace_get_regs)")


class FprobeBatch:
    """The lab's batched fprobe handlers: their guest code (assembled once per lab), the fprobes
    that use them (by key: the guest handlers' data), and the ring-buffer consumer that calls
    their Python handlers in order."""

    def __init__(self, ftrace, ring_buffer, kernel: KernelVersion = MODELLED):
        m, karch = ftrace.m, ftrace.karch
        self.m, self.karch, self.ftrace, self.rb = m, karch, ftrace, ring_buffer
        self.records = BatchRecords.of(karch, kernel)
        syms = karch.load(
            m,
            "fprobe_batched.S",
            {**self.records.asm_constants(), "rb_reserve": ring_buffer.reserve},
            self.records.asm_macros(),
        )
        self.entry, self.exit = syms["fprobe_batched_entry"], syms["fprobe_batched_exit"]
        self.rec = struct.Struct(f"<{self.records.size // 8}Q")
        self.probes: dict[int, object] = {}  # key -> its Fprobe
        self._next_key = 1
        self._queue: deque[bytes] = deque()
        self._dispatching = False
        self._data: dict[tuple[int, int], bytearray] = {}  # (key, entry data address) -> its buffer
        self._shapes: dict[int, dict[int, _Shape]] = {REC_FPROBE_ENTRY: {}, REC_FPROBE_EXIT: {}}  # by type, by ip
        inverse = {r: m for m, r in karch.ftrace_regs_aliases.items()}
        self._lr = inverse.get(karch.cpu.lr, karch.cpu.lr) if karch.cpu.lr else None
        self._sp = inverse.get(karch.cpu.sp, karch.cpu.sp)
        self._args = tuple(inverse.get(r, r) for r in karch.cpu.arg_regs)

    # -- registration -----------------------------------------------------------------------------

    def add(self, fp) -> None:
        """fp's hits are recorded from now: the buffer is held (refused while a tracer holds it)."""
        if not self.probes:
            self.rb.claim(HOLDER, "stream", self._consume, self.records.size)
        fp._batch_key, self._next_key = self._next_key, self._next_key + 1
        self.probes[fp._batch_key] = fp

    def remove(self, fp) -> None:
        """fp goes (its records were drained first: Fprobes.unregister flushes); the last one
        gives the buffer back, emptied."""
        self.probes.pop(fp._batch_key, None)
        self._data = {k: v for k, v in self._data.items() if k[0] != fp._batch_key}
        if not self.probes and self.rb.holds(HOLDER):
            self.rb.drain()
            self.rb.reset("stream", None)
            self.rb.release(HOLDER)

    def flush(self) -> None:
        """Drain the records now: the batched handlers of every hit so far run, in order."""
        if self.probes and self.rb.holds(HOLDER):
            self.rb.drain()

    # -- the Python dispatch's records (the same as the guest handlers') --------------------------

    def _flags(self) -> int:
        return self.m.reg(self.karch.cpu.flags_reg)

    def write_entry(self, fp, ip: int, ret_ip: int, fregs, data: int | None) -> int:
        """The entry record fprobe_batched_entry writes, written by the Python dispatch from the
        same guest memory (fregs' members, the word at sp or lr); 0: the exit is not skipped."""
        retaddr = fregs.member(self._lr) if self._lr else self.m.u64(fregs.member(self._sp))
        words = (fregs.member(m) for m in self.records.saved)
        self.rb.write(REC_FPROBE_ENTRY, fp._batch_key, ip, ret_ip, self._flags(), data or 0, retaddr, *words)
        return 0

    def write_exit(self, fp, ip: int, ret_ip: int, fregs, data: int | None) -> None:
        words = (fregs.member(m) for m in self.records.exit_saved)
        self.rb.write(REC_FPROBE_EXIT, fp._batch_key, ip, ret_ip, self._flags(), data or 0, *words)

    # -- the consumer -----------------------------------------------------------------------------

    def _shape(self, type_: int, ip: int) -> _Shape:
        karch, records = self.karch, self.records
        aliases = karch.ftrace_regs_aliases
        if type_ == REC_FPROBE_ENTRY:
            members, first, at = records.saved, RETADDR + 1, "entry"
            # a member stored but not captured at this kind of site (arm64 -pg: x0) is no field
            lost = self.ftrace.uncaptured().get(ip, ())
            saved = tuple(m for m in members if m not in lost)
        else:
            members, first, at = records.exit_saved, _FIELDS, "exit"
            saved = members
        recorded = {m: first + i for i, m in enumerate(members)}
        shape = _Shape(
            at,
            recorded,
            saved,
            {aliases.get(m, m): recorded[m] for m in saved},
            tuple(missing_registers(karch, saved, aliases)),
            self._args,
            self.m.irqs_masked,
        )
        self._shapes[type_][ip] = shape
        return shape

    def _consume(self, chunk: bytes) -> None:
        """The ring buffer's consumer: each record's handler, in order. Records drained while a
        handler runs (one that calls guest code) wait for the records before them."""
        self._queue.append(chunk)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                self._dispatch(self._queue.popleft())
        finally:
            self._dispatching = False
            self._queue.clear()  # a handler's error: what it left undone is not run later

    def _dispatch(self, chunk: bytes) -> None:
        probes, karch, pairs = self.probes, self.karch, self._data
        entries, exits = self._shapes[REC_FPROBE_ENTRY], self._shapes[REC_FPROBE_EXIT]
        entry_type, exit_type, key_at, ip_at, ret_at, data_at = REC_FPROBE_ENTRY, REC_FPROBE_EXIT, KEY, IP, RET_IP, DATA
        for w in self.rec.iter_unpack(chunk):
            type_ = w[TYPE]
            if type_ == entry_type:
                fp, ip = probes[w[key_at]], w[ip_at]
                shape = entries.get(ip) or self._shape(type_, ip)
                data = None
                if w[data_at]:
                    data = pairs[w[key_at], w[data_at]] = bytearray(fp.entry_data_size)
                if fp.entry_handler(fp, ip, w[ret_at], RecordedRegs(karch, shape, w), data):
                    raise FtlabError(
                        f"fprobe (batched): the entry handler returned non-zero at "
                        f"{self.m.symbols.name(ip)}, which would skip the exit, but the guest has "
                        "already let the exit run; use Fprobe(batched=False) to skip exits"
                    )
            elif type_ == exit_type:
                fp, ip = probes[w[key_at]], w[ip_at]
                shape = exits.get(ip) or self._shape(type_, ip)
                data = None
                if w[data_at]:
                    data = pairs.pop((w[key_at], w[data_at]), None) or bytearray(fp.entry_data_size)
                fp.exit_handler(fp, ip, w[ret_at], RecordedRegs(karch, shape, w), data)
            # else REC_UNCOMMITTED: a run an error stopped in the middle of the record
