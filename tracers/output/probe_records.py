"""Probe events' ring-buffer records, for events whose fetchargs guest code fetched (the kernel's
trace_fprobe.c fentry_trace_func / fexit_trace_func, trace_kprobe.c kprobe_trace_func, and
store_trace_args): declared once here, for the guest handlers' asm constants and for the decoder
that turns them back into the events the Python path makes.

Each record holds the event (the spec's index), the function (a kprobe's: its probe address,
kprobe_trace_func's entry->ip = tk->rp.kp.addr) and where it returns (at an entry, the word at the
stack pointer; a kretprobe's: kretprobe_trace_func's func and ret_ip), which fetches faulted (a bit
each), the CPU's flags word (for irqs-off), the ftrace_regs fields the handler was given (a
kprobe's: the pt_regs fields ftrace_regs_caller captured, as the pre_handler saw them, regs->ip the
probe + 1; a kretprobe's: the pt_regs fields the rethook trampoline saved, as its handler saw them),
then one word per fetcharg: as loaded, before the type's truncation, which decoding applies. The
fetch words come last, so a trace's records are as long as its events need (RingBuffer.reset's
record_size) and the guest code's offsets do not depend on how many there are."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emulator.layout import Layout

from ..core.regs import missing_registers
from ..core.ring_buffer import RECORD_HEADER
from ..kernel_version import MODELLED, KernelVersion
from ..probe_events import FAULT, TYPES, ProbeSpec
from ..probe_events.spec import U64, _convert
from .events import NR_ARGS, Event
from .records import EVENT_RECORD, REC_EVENT, fields_macro

REC_PROBE_ENTRY, REC_PROBE_EXIT, REC_PROBE_KPROBE, REC_PROBE_KRETPROBE = 4, 5, 6, 7
HEAD = ("event", "ip", "parent", "faults", "flags")
_FIELDS = RECORD_HEADER.nr_words + len(HEAD)  # where the ftrace_regs fields begin
WORDS = dict(zip(HEAD, range(RECORD_HEADER.nr_words, _FIELDS), strict=True))  # each HEAD field's word


@dataclass(frozen=True)
class ProbeRecords:
    entry: Layout  # ..., the entry's ftrace_regs fields, fetch
    exit: Layout  # ..., the exit's ftrace_regs fields, fetch
    saved: tuple[str, ...]
    exit_saved: tuple[str, ...]
    # a kprobe on an ftrace site's pre_handler: ..., the pt_regs fields, fetch; None where the arch
    # has no ftrace_regs_caller (no KPROBES_ON_FTRACE: its kprobes keep the Python path)
    kprobe: Layout | None = None
    kprobe_saved: tuple[str, ...] = ()
    # a kretprobe's return handler (the rethook trampoline's pt_regs): ..., those fields, fetch;
    # None where the release's trampoline has no guest callback (its r events keep the Python path)
    kretprobe: Layout | None = None
    kretprobe_saved: tuple[str, ...] = ()

    @classmethod
    def of(cls, karch, kernel: KernelVersion = MODELLED) -> ProbeRecords:
        saved, exit_saved = karch.ftrace_regs_saved, karch.fgraph.exit_saved(kernel)
        kprobe_saved = karch.regs_caller.saved if karch.regs_caller is not None else ()
        kretprobe_saved = karch.rethook.saved if karch.rethook.trampoline(kernel).guest else ()
        regs = [tuple(f"regs_{m}" for m in members) for members in (saved, exit_saved, kprobe_saved, kretprobe_saved)]
        return cls(
            RECORD_HEADER.extend("probe entry record", (*HEAD, *regs[0], "fetch")),
            RECORD_HEADER.extend("probe exit record", (*HEAD, *regs[1], "fetch")),
            saved,
            exit_saved,
            RECORD_HEADER.extend("probe kprobe record", (*HEAD, *regs[2], "fetch")) if kprobe_saved else None,
            kprobe_saved,
            RECORD_HEADER.extend("probe kretprobe record", (*HEAD, *regs[3], "fetch")) if kretprobe_saved else None,
            kretprobe_saved,
        )

    def size(self, nr_fetch: int, kprobes: bool = False, kretprobes: bool = False) -> int:
        """A record's bytes, with room for nr_fetch fetched words (and for a kprobe's or a
        kretprobe's pt_regs)."""
        layouts = [self.entry, self.exit]
        layouts += [self.kprobe] if kprobes and self.kprobe is not None else []
        layouts += [self.kretprobe] if kretprobes and self.kretprobe is not None else []
        return max(layout.size for layout in layouts) + 8 * (nr_fetch - 1)

    def asm_constants(self) -> dict[str, int]:
        consts = {
            **{f"PROBE_{name.upper()}": 8 * word for name, word in WORDS.items()},  # every record's head
            **self.entry.asm_constants("PROBE_ENT_"),
            **self.exit.asm_constants("PROBE_RET_"),
            "REC_PROBE_ENTRY": REC_PROBE_ENTRY,
            "REC_PROBE_EXIT": REC_PROBE_EXIT,
        }
        if self.kprobe is not None:
            consts |= {**self.kprobe.asm_constants("PROBE_KP_"), "REC_PROBE_KPROBE": REC_PROBE_KPROBE}
        if self.kretprobe is not None:
            consts |= {**self.kretprobe.asm_constants("PROBE_KRP_"), "REC_PROBE_KRETPROBE": REC_PROBE_KRETPROBE}
        return consts

    def asm_macros(self) -> str:
        """`probe_entry_fields fregs, rec` and `probe_exit_fields fregs, rec`: the copy of each
        record's ftrace_regs fields (records.fields_macro); `probe_kprobe_fields regs, rec`, the
        pt_regs fields, where there is a kprobe record; `probe_kretprobe_fields regs, rec` where
        there is a kretprobe record."""
        kprobe = "" if self.kprobe is None else fields_macro("probe_kprobe_fields", self.kprobe_saved, "PROBE_KP")
        kretprobe = (
            "" if self.kretprobe is None else fields_macro("probe_kretprobe_fields", self.kretprobe_saved, "PROBE_KRP")
        )
        return (
            fields_macro("probe_entry_fields", self.saved, "PROBE_ENT")
            + fields_macro("probe_exit_fields", self.exit_saved, "PROBE_RET")
            + kprobe
            + kretprobe
        )


class ProbeDecoder:
    """The guest handlers' records as the events ProbeEventTracer's Python path makes: `specs` by
    event index; `symbolize` gives a symbol type's %pS text; `irqs_masked` reads the flags word;
    `mechanism` names the entry and exit records' events (a kprobe record's is "kprobe")."""

    def __init__(self, karch, kernel: KernelVersion, specs: list[ProbeSpec], symbolize, irqs_masked, mechanism: str):
        self.layouts = ProbeRecords.of(karch, kernel)
        self.specs, self.symbolize, self.irqs_masked, self.mechanism = specs, symbolize, irqs_masked, mechanism
        self.counts = [0] * len(specs)  # the records decoded, by event
        aliases = karch.ftrace_regs_aliases
        self.saved, self.exit_saved = self.layouts.saved, self.layouts.exit_saved
        self.missing_in = tuple(missing_registers(karch, self.saved, aliases))
        self.missing_out = tuple(missing_registers(karch, self.exit_saved, aliases))
        # the argument registers' members (ftrace_regs_get_argument reads the member, captured or not)
        members = {aliases.get(m, m): m for m in karch.ftrace_regs.offsets}
        self.args = [self.saved.index(members[r]) for r in karch.cpu.arg_regs[:NR_ARGS]]
        ret = members[karch.cpu.ret_regs[0]]
        self.ret = self.exit_saved.index(ret)
        # the trace's records, as long as its events' fetches need; where each type's fetch words begin
        # kprobe records (pt_regs from ftrace_regs_caller), when the trace has p events
        self.kprobes = any(s.kind == "p" for s in specs) and self.layouts.kprobe is not None
        self.kprobe_saved = self.layouts.kprobe_saved
        self.missing_kp = tuple(missing_registers(karch, self.kprobe_saved))
        self.kp_args = [self.kprobe_saved.index(r) for r in karch.cpu.arg_regs[:NR_ARGS] if r in self.kprobe_saved]
        # kretprobe records (the rethook trampoline's pt_regs), when the trace has r events
        self.kretprobes = any(s.kind == "r" for s in specs) and self.layouts.kretprobe is not None
        self.kretprobe_saved = self.layouts.kretprobe_saved
        self.missing_krp = tuple(missing_registers(karch, self.kretprobe_saved))
        self.krp_ret = self.kretprobe_saved.index(karch.cpu.ret_regs[0]) if self.kretprobes else 0
        nr_fetch = max((len(s.args) for s in specs), default=0)
        self.rec = struct.Struct(f"<{self.layouts.size(nr_fetch, self.kprobes, self.kretprobes) // 8}Q")
        self.fetch_at = {
            REC_PROBE_ENTRY: _FIELDS + len(self.saved),
            REC_PROBE_EXIT: _FIELDS + len(self.exit_saved),
        }
        if self.kprobes:
            self.fetch_at[REC_PROBE_KPROBE] = _FIELDS + len(self.kprobe_saved)
        if self.kretprobes:
            self.fetch_at[REC_PROBE_KRETPROBE] = _FIELDS + len(self.kretprobe_saved)
        # the records whose head shows where the function returned
        self.exit_types = (REC_PROBE_EXIT, REC_PROBE_KRETPROBE)

    def events(self, chunk: bytes, pending: dict):
        """The events of a chunk of records; a REC_EVENT record's is in `pending`, by its key (an
        event a Python handler made, when the hit took the Python dispatch). Counts each record's
        event by index in `counts`."""
        specs, counts, mechanism, masked = self.specs, self.counts, self.mechanism, self.irqs_masked
        saved, exit_saved, args_at, ret = self.saved, self.exit_saved, self.args, self.ret
        missing_in, missing_out, key = self.missing_in, self.missing_out, EVENT_RECORD.index("key")
        fetch_in = self.fetch_at[REC_PROBE_ENTRY]
        fetch_kp = self.fetch_at.get(REC_PROBE_KPROBE, 0)
        kp_saved, kp_args, missing_kp = self.kprobe_saved, self.kp_args, self.missing_kp
        for w in self.rec.iter_unpack(chunk):
            kind = w[0]
            if kind == REC_PROBE_KPROBE:
                # kprobe_trace_func: a pre_handler's event, as the Python path's _entry makes it: its
                # probe address, the caller only at a function's entry (offset 0), the pt_regs
                # ftrace_regs_caller captured, regs_get_kernel_argument's arguments
                fields = w[_FIELDS:fetch_kp]
                spec = specs[w[2]]
                counts[w[2]] += 1
                yield Event(
                    "kprobe",
                    "entry",
                    w[3],
                    w[4] if spec.offset == 0 else None,
                    0,
                    w[1],
                    tuple(fields[i] for i in kp_args),
                    "pt_regs",
                    dict(zip(kp_saved, fields, strict=True)),
                    missing_kp,
                    probe=spec,
                    fetch=tuple(zip(spec.args, self.values(spec, w), strict=True)),
                    irqs_off=masked(w[6]),
                )
                continue
            if kind == REC_PROBE_KRETPROBE:
                yield self._kretprobe(w)
                continue
            if kind == REC_PROBE_ENTRY:
                fields = w[_FIELDS:fetch_in]
                regs, missing, args, retval, type_ = (
                    dict(zip(saved, fields, strict=True)),
                    missing_in,
                    tuple(fields[i] for i in args_at),
                    None,
                    "entry",
                )
            elif kind == REC_PROBE_EXIT:
                fields = w[_FIELDS : _FIELDS + len(exit_saved)]
                regs, missing, args, retval, type_ = (
                    dict(zip(exit_saved, fields, strict=True)),
                    missing_out,
                    None,  # the kernel keeps no arguments for an exit, only the $argN it uses
                    fields[ret],
                    "exit",
                )
            elif kind == REC_EVENT:  # (gone if a consumer that failed saw it before)
                if (made := pending.pop(w[key], None)) is not None:
                    yield made
                continue
            else:  # REC_UNCOMMITTED: a run an error stopped in the middle of the record
                continue
            event = w[2]
            counts[event] += 1
            spec = specs[event]
            yield Event(
                mechanism,
                type_,
                w[3],
                w[4],
                0,
                w[1],
                args,
                "ftrace_regs",
                regs,
                missing,
                retval=retval,
                probe=spec,
                fetch=tuple(zip(spec.args, self.values(spec, w), strict=True)),
                irqs_off=masked(w[6]),
            )

    def _kretprobe(self, w: tuple[int, ...]) -> Event:
        """kretprobe_trace_func: a return handler's event, as the Python path's _exit makes it: the
        function, where it returned (regs->ip), the trampoline's pt_regs, regs_return_value."""
        fields = w[_FIELDS : self.fetch_at[REC_PROBE_KRETPROBE]]
        spec = self.specs[w[2]]
        self.counts[w[2]] += 1
        return Event(
            "kretprobe",
            "exit",
            w[3],
            w[4],
            0,
            w[1],
            None,
            "pt_regs",
            dict(zip(self.kretprobe_saved, fields, strict=True)),
            self.missing_krp,
            retval=fields[self.krp_ret],
            probe=spec,
            fetch=tuple(zip(spec.args, self.values(spec, w), strict=True)),
            irqs_off=self.irqs_masked(w[6]),
        )

    def values(self, spec: ProbeSpec, w: tuple[int, ...]) -> tuple[int | str, ...]:
        """An entry or exit record's (its words w) fetched values as its event's types read them."""
        faults, at = w[5], self.fetch_at[w[0]]
        return tuple(FAULT if faults >> i & 1 else self._value(arg.type, w[at + i]) for i, arg in enumerate(spec.args))

    def _value(self, type_: str, raw: int) -> int | str:
        if TYPES[type_][1] == "symbol":
            return self.symbolize(raw & U64)
        return _convert(raw, type_)
