"""fprobe (kernel/trace/fprobe.c): entry and exit handlers on many functions at once, in both of
the kernel's designs, so they can be compared:

* ``fgraph`` (6.14+): one shared fgraph_ops; handlers get ftrace_regs at entry and exit, and the
  entry_data lives on the fgraph shadow stack (a header word per probe, then its data).
* ``rethook`` (5.18-6.13): an ftrace_ops per fprobe for the entry and a rethook node per call for
  the exit; exit handlers get the pt_regs the rethook trampoline built. Only where the arch had
  rethook (x86_64): arm64 had none, so no fprobe before 6.14 (RethookArch.no_rethook_reason).

Handlers: entry_handler(fp, entry_ip, ret_ip, regs, entry_data) -> int (non-zero: skip the exit,
not counted as missed); exit_handler(fp, entry_ip, ret_ip, regs, entry_data). entry_data is the
guest address of entry_data_size bytes, or None when entry_data_size is 0.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from emulator import FtlabError

from .fgraph import FgraphOps
from .ftrace import FtraceOps, OpsFlag
from .kretprobe import NR_CPUS
from .rethook import Rethook

DESIGNS = ("fgraph", "rethook")
MAX_ENTRY_DATA_WORDS = 15  # the size shares a header word with the fprobe's id
HEADER = struct.Struct("<Q")


@dataclass(eq=False)
class Fprobe:
    entry_handler: Callable | None = None
    exit_handler: Callable | None = None
    entry_data_size: int = 0
    nr_maxactive: int = 0  # the rethook design's node pool (0: the kernel's default)
    nmissed: int = 0
    disabled: bool = False
    ips: set[int] = field(default_factory=set)
    id: int = 0
    _ops: FtraceOps | None = None
    _rethook: Rethook | None = None


class Fprobes:
    """register_fprobe and friends, on the chosen design."""

    def __init__(self, ftrace, fgraph, rethook, design: str = "fgraph", release=None):
        """release: the kernel release whose design this is (registration is then refused where
        that release had no fprobe); None: the design was asked for, and is refused at once."""
        if design not in DESIGNS:
            raise FtlabError(f"unknown fprobe design '{design}' (known: {', '.join(DESIGNS)})")
        reason = ftrace.karch.rethook.no_rethook_reason if design == "rethook" else None
        if reason and release is None:
            raise FtlabError(f"fprobe: no rethook design on {ftrace.karch.name}: {reason}")
        self._refused = reason and f"fprobe: Linux {release} has no fprobe on {ftrace.karch.name}: {reason}"
        self.ftrace, self.fgraph, self.rethook, self.design = ftrace, fgraph, rethook, design
        self.m = ftrace.m
        self.probes: dict[int, Fprobe] = {}
        self._by_ip: dict[int, list[Fprobe]] = {}
        self._next_id = 1
        self._gops = FgraphOps(self._graph_entry, self._graph_exit, name="fprobe")

    # -- registration (register_fprobe / _ips / _syms, unregister_fprobe) ------------------------

    def register(self, fp: Fprobe, filter: str, notfilter: str | None = None) -> None:
        """register_fprobe(fp, filter, notfilter): comma-separated globs."""
        sites = self.ftrace.sites
        want = {s.ip for s in sites if any(fnmatchcase(s.func.name, g) for g in filter.split(","))}
        if notfilter:
            want -= {s.ip for s in sites if any(fnmatchcase(s.func.name, g) for g in notfilter.split(","))}
        if not want:
            raise FtlabError(f"fprobe: '{filter}' matches no traceable function")
        self._add(fp, want)

    def register_syms(self, fp: Fprobe, syms) -> None:
        self._add(fp, {self.ftrace.site(s).ip for s in syms})

    def register_ips(self, fp: Fprobe, ips) -> None:
        """Addresses must be patch sites (ftrace_location() must succeed for each)."""
        for ip in ips:
            if ip not in self.ftrace.by_ip:
                raise FtlabError(f"fprobe: {ip:#x} ({self.m.symbols.name(ip)}) is not a patch site")
        self._add(fp, set(ips))

    def unregister(self, fp: Fprobe) -> None:
        if fp.id not in self.probes:
            raise FtlabError("fprobe: unregistering an fprobe that is not registered")
        del self.probes[fp.id]
        self._by_ip.clear()
        if fp._ops is not None:
            self.ftrace.unregister(fp._ops)
        self._update_graph()

    def enable(self, fp: Fprobe) -> None:
        """enable_fprobe: handlers run again (the probe stays registered either way)."""
        fp.disabled = False
        self._by_ip.clear()

    def disable(self, fp: Fprobe) -> None:
        """disable_fprobe: a soft disable; hits are ignored, hooks stay in place."""
        fp.disabled = True
        self._by_ip.clear()

    def _add(self, fp: Fprobe, ips: set[int]) -> None:
        if self._refused:
            raise FtlabError(self._refused)
        if fp.id in self.probes:
            raise FtlabError("fprobe: already registered")
        if fp.entry_data_size > 8 * MAX_ENTRY_DATA_WORDS:
            raise FtlabError(f"fprobe: entry_data_size {fp.entry_data_size} is over {8 * MAX_ENTRY_DATA_WORDS} bytes")
        fp.ips, fp.id, fp.nmissed = ips, self._next_id, 0
        self._next_id += 1
        self.probes[fp.id] = fp
        self._by_ip.clear()
        if self.design == "fgraph":
            self._update_graph()
        else:
            if fp.exit_handler:
                # 6.4-6.13 sized the pool as nr_maxactive, by default num * num_possible_cpus() * 2
                fp._rethook = Rethook(
                    self.rethook,
                    lambda node, regs: self._rethook_exit(fp, node, regs),
                    fp.entry_data_size,
                    fp.nr_maxactive or len(ips) * NR_CPUS * 2,
                )
            fp._ops = FtraceOps(
                lambda ip, parent, op, fregs: self._rethook_entry(fp, ip, fregs),
                OpsFlag.RECURSION,
                name="fprobe",
                filter=set(ips),
            )
            self.ftrace.register(fp._ops)

    def _update_graph(self) -> None:
        if self.design != "fgraph":
            return
        fgraph, ips = self.fgraph, set().union(*(fp.ips for fp in self.probes.values()))
        if self._gops in fgraph.array:
            fgraph.unregister(self._gops)
        if ips:
            self._gops.ops.filter = ips
            fgraph.register(self._gops)

    # -- the fgraph design (fprobe_entry / fprobe_return) -----------------------------------------

    def _at(self, ip: int) -> tuple[list[Fprobe], int]:
        """The enabled fprobes on an address (the kernel's ip hash table) and the shadow-stack bytes
        their exits need, kept until registration or enabling changes."""
        at = self._by_ip.get(ip)
        if at is None:
            probes = [fp for fp in self.probes.values() if ip in fp.ips and not fp.disabled]
            at = self._by_ip[ip] = (
                probes,
                sum(8 + 8 * -(-fp.entry_data_size // 8) for fp in probes if fp.exit_handler),
            )
        return at

    def _graph_entry(self, trace, gops, fregs) -> int:
        ip, m = trace.func, self.m
        probes, need = self._at(ip)
        cursor = self.fgraph.reserve_data(need) if need else None
        if need and cursor is None:  # no room on the shadow stack: exits all missed
            for fp in probes:
                fp.nmissed += bool(fp.exit_handler)
        ret_ip, stored = fregs.get_return_address(), False
        for fp in probes:
            exits = fp.exit_handler is not None and cursor is not None
            data = cursor + 8 if exits and fp.entry_data_size else None
            skip = fp.entry_handler(fp, ip, ret_ip, fregs, data) if fp.entry_handler else 0
            if exits:
                words = -(-fp.entry_data_size // 8)
                # header: the fprobe (by id) and its data size in words; id 0 marks a skipped exit
                m.pack(HEADER, cursor, 0 if skip else fp.id | words << 60)
                stored |= not skip
                cursor += 8 + 8 * words
        return int(stored)

    def _graph_exit(self, trace, gops, fregs) -> None:
        """Walk the headers stored at entry; call each fprobe still registered and enabled."""
        m, reserved = self.m, self.fgraph.retrieve_data()
        if reserved is None:
            return
        cursor, size = reserved
        end, ret_ip = cursor + size, fregs.get_instruction_pointer()
        while cursor < end:
            [header] = m.unpack(HEADER, cursor)
            words, fp = header >> 60, self.probes.get(header & ((1 << 60) - 1))
            if fp is not None and not fp.disabled:
                fp.exit_handler(fp, trace.func, ret_ip, fregs, cursor + 8 if fp.entry_data_size else None)
            cursor += 8 + 8 * words

    # -- the rethook design (fprobe_handler / fprobe_exit_handler, 6.4-6.13) ----------------------

    def _rethook_entry(self, fp: Fprobe, ip: int, fregs) -> None:
        if fp.disabled:
            return
        ret_ip = fregs.get_return_address()
        if not fp.exit_handler:
            fp.entry_handler(fp, ip, ret_ip, fregs, None)
            return
        node = fp._rethook.try_get()
        if node is None:
            fp.nmissed += 1
            return
        if fp.entry_handler and fp.entry_handler(fp, ip, ret_ip, fregs, node.data):
            fp._rethook.recycle(node)
            return
        fp._rethook.hook(node, fregs, ip)

    def _rethook_exit(self, fp: Fprobe, node, regs) -> None:
        if not fp.disabled:
            fp.exit_handler(fp, node.func, node.ret_addr, regs, node.data)
