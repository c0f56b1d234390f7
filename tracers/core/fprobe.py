"""fprobe (kernel/trace/fprobe.c): entry and exit handlers on many functions at once, in both of
the kernel's designs, so they can be compared:

* ``fgraph`` (6.14+): one shared fgraph_ops; handlers get ftrace_regs at entry and exit, and the
  entry_data lives on the fgraph shadow stack (a header word per probe, then its data). From 6.19
  an fprobe with no exit handler runs on one shared plain ftrace_ops instead, off the shadow stack
  (fprobe_ftrace_entry: torvalds/linux 2c67dc457bc6, made FTRACE_OPS_FL_SAVE_ARGS for
  DYNAMIC_FTRACE_WITH_ARGS arches such as arm64 by cd06078a38aa).
* ``rethook`` (5.18-6.13): an ftrace_ops per fprobe (FTRACE_OPS_FL_SAVE_REGS) for the entry and a
  rethook node per call for the exit; entry handlers get the pt_regs ftrace_regs_caller built,
  exit handlers the pt_regs the rethook trampoline built. Only where the arch had rethook
  (x86_64): arm64 had none, so no fprobe before 6.14 (RethookArch.no_rethook_reason).

Handlers: entry_handler(fp, entry_ip, ret_ip, regs, entry_data) -> int (non-zero: skip the exit,
not counted as missed); exit_handler(fp, entry_ip, ret_ip, regs, entry_data). entry_data is the
guest address of entry_data_size bytes, or None when entry_data_size is 0.

While a fgraph-design registry is the only one using the lab's FprobeCode and none of its fprobes
is disabled, its dispatch runs in guest code (fprobe_guest.py): fgraph's push and pop and fprobe's
walk run no Python, a Python handler is entered for itself alone, and handlers written in guest
code (guest_entry, guest_exit: (code, data); probe events') enter none. Misses the guest counts are
part of nmissed.

Fprobe(..., batched=True): Python handlers that only observe, called later from ring-buffer
records the hits wrote (fprobe_batch.py: when the buffer drains, at the end of each Lab.call, at
Fprobes.flush and before unregister; their snapshot is read-only and their return value cannot
skip the exit). fgraph design only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from emulator import FtlabError

from ..kernel_version import MODELLED
from .fgraph import FgraphOps
from .ftrace import FtraceOps, OpsFlag
from .kretprobe import NR_CPUS
from .regs import FtraceRegs
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
    batched: bool = False  # observe-only Python handlers, called from the hits' records (fprobe_batch.py)
    _missed: int = 0  # nmissed counted in Python
    disabled: bool = False
    ips: set[int] = field(default_factory=set)
    id: int = 0
    guest_entry: tuple[int, int] | None = None  # the handlers in guest code: (code, data)
    guest_exit: tuple[int, int] | None = None
    _ops: FtraceOps | None = None
    _desc: int = 0  # its guest fprobe, while the dispatch runs in guest code
    _guest_missed: Callable[[], int] | None = None  # what the guest dispatch counted
    _rethook: Rethook | None = None
    _batch_key: int = 0  # its records' key, while registered batched

    @property
    def nmissed(self) -> int:
        """The misses counted in Python and in the guest dispatch."""
        return self._missed + (self._guest_missed() if self._guest_missed else 0)

    @nmissed.setter
    def nmissed(self, value: int) -> None:
        self._missed = value - (self._guest_missed() if self._guest_missed else 0)


class Fprobes:
    """register_fprobe and friends, on the chosen design."""

    def __init__(self, ftrace, fgraph, rethook, design: str = "fgraph", release=None, kernel=None, code=None):
        """release: the kernel release whose design this is (registration is then refused where
        that release had no fprobe); None: the design was asked for, and is refused at once.
        kernel: the release whose fgraph design this is (default the modelled one). code: the
        lab's FprobeCode, for fprobes with guest handlers."""
        if design not in DESIGNS:
            raise FtlabError(f"unknown fprobe design '{design}' (known: {', '.join(DESIGNS)})")
        reason = ftrace.karch.rethook.no_rethook_reason if design == "rethook" else None
        if reason and release is None:
            raise FtlabError(f"fprobe: no rethook design on {ftrace.karch.name}: {reason}")
        self._refused = reason and f"fprobe: Linux {release} has no fprobe on {ftrace.karch.name}: {reason}"
        self.ftrace, self.fgraph, self.rethook, self.design = ftrace, fgraph, rethook, design
        self.code = code if design == "fgraph" else None
        self.m = ftrace.m
        self.probes: dict[int, Fprobe] = {}
        self._by_ip: dict[int, list[Fprobe]] = {}
        self._next_id = 1
        self._gops = FgraphOps(self._graph_entry, self._graph_exit, name="fprobe")
        # fprobe_ftrace_ops (6.19+): FTRACE_OPS_FL_SAVE_ARGS, ftrace_caller's ftrace_regs on both arches
        self._entry_only = design == "fgraph" and (kernel or release or MODELLED).has("fprobe_entry_only_ftrace")
        self._fops = FtraceOps(self._ftrace_entry, OpsFlag.NONE, name="fprobe_ftrace_ops")

    def _is_ftrace(self, fp: Fprobe) -> bool:
        """fprobe_is_ftrace(): the fprobe runs on fprobe_ftrace_ops (6.19+, no exit handler)."""
        return self._entry_only and fp.exit_handler is None

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
        if fp.batched:  # its hits' handlers run first
            self.code.batch.flush()
        del self.probes[fp.id]
        self._by_ip.clear()
        self._leave_guest(fp)
        if fp._rethook is not None:  # the rethook design's unregister_fprobe: rethook_free
            fp._rethook.release()
        if fp._ops is not None:
            self.ftrace.unregister(fp._ops)
        self._update_graph()
        if fp.batched:
            self.code.batch.remove(fp)

    def flush(self) -> None:
        """Run the batched fprobes' handlers for every hit recorded so far (the ring buffer drains;
        Lab.call does this at the end of each call)."""
        if self.code is not None and self.code.batch is not None:
            self.code.batch.flush()

    def enable(self, fp: Fprobe) -> None:
        """enable_fprobe: handlers run again (the probe stays registered either way)."""
        fp.disabled = False
        self._by_ip.clear()
        self._update_graph()

    def disable(self, fp: Fprobe) -> None:
        """disable_fprobe: a soft disable; hits are ignored, hooks stay in place."""
        fp.disabled = True
        self._by_ip.clear()
        self._update_graph()

    def _add(self, fp: Fprobe, ips: set[int]) -> None:
        if self._refused:
            raise FtlabError(self._refused)
        if fp.id in self.probes:
            raise FtlabError("fprobe: already registered")
        if fp.entry_data_size > 8 * MAX_ENTRY_DATA_WORDS:
            raise FtlabError(f"fprobe: entry_data_size {fp.entry_data_size} is over {8 * MAX_ENTRY_DATA_WORDS} bytes")
        if fp.batched:
            self._check_batched(fp)
            self.code.batch.add(fp)  # holds the ring buffer: refused while a tracer holds it
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
            # fprobe_init: FTRACE_OPS_FL_SAVE_REGS (a full pt_regs from ftrace_regs_caller; an arch
            # without one refuses the ops), no FTRACE_OPS_FL_RECURSION: fprobe_handler guards itself
            fp._ops = FtraceOps(
                lambda ip, parent_ip, op, fregs: self._rethook_entry(fp, ip, parent_ip, fregs),
                OpsFlag.SAVE_REGS,
                name="fprobe",
                filter=set(ips),
            )
            self.ftrace.register(fp._ops)

    def _check_batched(self, fp: Fprobe) -> None:
        if self.design != "fgraph" or self.code is None or self.code.batch is None:
            raise FtlabError(
                "fprobe: batched handlers need the fgraph design (6.14+), whose dispatch runs in guest code"
            )
        if fp.guest_entry or fp.guest_exit:
            raise FtlabError("fprobe: batched is for Python handlers; guest handlers write their own records")
        if not (fp.entry_handler or fp.exit_handler):
            raise FtlabError("fprobe: a batched fprobe needs an entry or an exit handler")

    def _update_graph(self) -> None:
        if self.design != "fgraph":
            return
        probes = self.probes.values()
        guest = self._guest()
        fgraph, ips = self.fgraph, set().union(*(fp.ips for fp in probes if not self._is_ftrace(fp)))
        if self._gops in fgraph.array:
            fgraph.unregister(self._gops)
        if ips:
            self._gops.ops.filter = ips
            self._gops.guest = (guest.graph_entry, guest.graph_return) if guest else None
            fgraph.register(self._gops)
        self._fops.guest_func = guest.ftrace_entry if guest else None
        # fprobe_ftrace_add_ips / _remove_ips: registered once, its filter changed in place
        ftrace, ips = self.ftrace, set().union(*(fp.ips for fp in probes if self._is_ftrace(fp)))
        registered = self._fops in ftrace.ops
        if ips and registered:
            ftrace.set_filter_ips(self._fops, ips)
        elif ips:
            self._fops.filter = ips
            ftrace.register(self._fops)
        elif registered:
            ftrace.unregister(self._fops)
        if guest:
            self._publish(guest)

    def _guest(self):
        """The lab's FprobeCode, while this registry may dispatch in guest code: every fprobe is
        enabled, and no other registry is using it (else None: Python)."""
        code, probes = self.code, self.probes.values()
        usable = code is not None and code.owner in (None, self) and not any(fp.disabled for fp in probes)
        if not usable:
            for fp in probes:
                self._leave_guest(fp)
        if code is not None and code.owner in (None, self):
            code.owner = self if usable and probes else None
        return code if usable and probes else None

    def _leave_guest(self, fp: Fprobe) -> None:
        """fp's guest fprobe is no longer used: what it missed is kept in Python's count."""
        if fp._desc:
            missed = fp.nmissed
            fp._desc, fp._guest_missed = 0, None
            fp.nmissed = missed

    def python_entry(self, id: int, ip: int, ret_ip: int, fregs_addr: int, data: int) -> int:
        """A Python entry handler the guest dispatch called (fprobe_python_entry), under the
        recursion lock fgraph's entry takes (a refused nesting skips the handler and the exit, as
        function_graph_enter_regs drops the call); non-zero: skip the exit."""
        fp, ftrace = self.probes[id], self.ftrace
        recursion = ftrace.recursion
        bit = recursion.trylock(ip, ret_ip, recursion.FTRACE_START)
        if bit < 0:
            return 1
        try:
            regs = FtraceRegs(ftrace.karch, self.m, fregs_addr, saved=ftrace.saved_at(ftrace.by_ip[ip]))
            return int(bool(fp.entry_handler(fp, ip, ret_ip, regs, data or None)))
        finally:
            recursion.unlock(bit)

    def python_exit(self, id: int, ip: int, ret_ip: int, fregs_addr: int, data: int) -> None:
        """A Python exit handler the guest dispatch called (fprobe_python_exit), with the exit's
        ftrace_regs as fgraph's return builds them."""
        fp = self.probes[id]
        fp.exit_handler(fp, ip, ret_ip, self.fgraph.exit_fregs(fregs_addr, ret_ip), data or None)

    def _publish(self, code) -> None:
        graph: dict[int, list[int]] = {}
        ftrace: dict[int, list[int]] = {}
        for fp in self.probes.values():
            if not fp._desc:
                fp._desc = desc = code.descriptor(fp)
                fp._guest_missed = lambda d=desc: code.nmissed(d)
            for ip in sorted(fp.ips):
                (ftrace if self._is_ftrace(fp) else graph).setdefault(ip, []).append(fp._desc)
        reserved = {ip: (self._at(ip)[1], descs) for ip, descs in graph.items()}
        code.publish(reserved, ftrace, {fp.id: fp._desc for fp in self.probes.values()}, self._gops)

    def _ftrace_entry(self, ip: int, parent_ip: int, op, fregs) -> None:
        """fprobe_ftrace_entry (kernel/trace/fprobe.c, 2c67dc457bc6, 6.19): under its own recursion
        lock (a refused nesting is not counted), each enabled entry-only fprobe on ip gets
        __fprobe_handler(ip, parent_ip, fp, fregs, NULL): ret_ip is parent_ip, no entry_data."""
        recursion = self.ftrace.recursion
        bit = recursion.trylock(ip, parent_ip, recursion.FTRACE_START)
        if bit < 0:
            return
        try:
            for fp in self._at(ip)[0]:
                if self._is_ftrace(fp) and fp.entry_handler:
                    handler = self.code.batch.write_entry if fp.batched else fp.entry_handler
                    handler(fp, ip, parent_ip, fregs, None)
        finally:
            recursion.unlock(bit)

    # -- the fgraph design (fprobe_entry / fprobe_return) -----------------------------------------

    def _at(self, ip: int) -> tuple[list[Fprobe], int]:
        """The enabled fprobes on an address (the kernel's ip hash table) and the shadow-stack bytes
        reserved for exits, kept until registration or enabling changes. The reservation counts
        disabled fprobes too: fprobe_entry ignores the flag there, as the fprobe may be enabled
        before the exit (kernel/trace/fprobe.c, v6.17)."""
        at = self._by_ip.get(ip)
        if at is None:
            on = [fp for fp in self.probes.values() if ip in fp.ips]
            at = self._by_ip[ip] = (
                [fp for fp in on if not fp.disabled],
                sum(8 + 8 * -(-fp.entry_data_size // 8) for fp in on if fp.exit_handler),
            )
        return at

    def _graph_entry(self, trace, gops, fregs) -> int:
        """fprobe_entry (kernel/trace/fprobe.c, v6.17; renamed fprobe_fgraph_entry by 2c67dc457bc6
        in 6.19). If fgraph has no room for the exits' data, every enabled fprobe on the address
        counts a miss and no handler runs. Each exit that will run gets a header (the fprobe by id,
        its data size in words) and its data, packed from the start of the reservation."""
        ip, m = trace.func, self.m
        probes, need = self._at(ip)
        cursor = 0
        if need:
            reserved = self.fgraph.reserve_data(need)
            if reserved is None:
                for fp in probes:
                    if not self._is_ftrace(fp):
                        fp.nmissed += 1
                return 0
            cursor = reserved
        ret_ip, used = fregs.get_return_address(), 0
        for fp in probes:
            if self._is_ftrace(fp):  # fprobe_fgraph_entry skips them (6.19+)
                continue
            exits = fp.exit_handler is not None
            data = cursor + used + 8 if exits and fp.entry_data_size else None
            handler = self.code.batch.write_entry if fp.batched else fp.entry_handler
            skip = handler(fp, ip, ret_ip, fregs, data) if fp.entry_handler else 0
            # a non-zero return skips the exit, not counted as missed
            if exits and not skip:
                words = -(-fp.entry_data_size // 8)
                m.pack(HEADER, cursor + used, fp.id | words << 60)
                used += 8 + 8 * words
        if used < need:
            # memset(fgraph_data + used, 0, reserved_words - used): a count of words given as bytes,
            # so it clears the low bytes of the next header, which ends fprobe_return's walk
            m.write(cursor + used, bytes((need - used) // 8))
        return int(used != 0)

    def _graph_exit(self, trace, gops, fregs) -> None:
        """Walk the headers stored at entry; call each fprobe still registered and enabled."""
        m, reserved = self.m, self.fgraph.retrieve_data()
        if reserved is None:
            return
        cursor, size = reserved
        end, ret_ip = cursor + size, fregs.get_instruction_pointer()
        while cursor < end:
            [header] = m.unpack(HEADER, cursor)
            words, id = header >> 60, header & ((1 << 60) - 1)
            if not id:  # a cleared header: no more exits stored
                break
            fp = self.probes.get(id)
            if fp is not None and not fp.disabled:
                handler = self.code.batch.write_exit if fp.batched else fp.exit_handler
                handler(fp, trace.func, ret_ip, fregs, cursor + 8 if fp.entry_data_size else None)
            cursor += 8 + 8 * words

    # -- the rethook design (fprobe_handler / fprobe_exit_handler, 6.4-6.13) ----------------------
    # kernel/trace/fprobe.c at ab9b0d476edf (6.4): both handlers guard themselves with
    # ftrace_test_recursion_trylock() and count a refused nesting in nmissed.

    def _rethook_entry(self, fp: Fprobe, ip: int, parent_ip: int, fregs) -> None:
        if fp.disabled:
            return
        recursion = self.ftrace.recursion
        bit = recursion.trylock(ip, parent_ip, recursion.FTRACE_START)
        if bit < 0:
            fp.nmissed += 1
            return
        try:
            self._rethook_handler(fp, ip, parent_ip, fregs)
        finally:
            recursion.unlock(bit)

    def _rethook_handler(self, fp: Fprobe, ip: int, parent_ip: int, fregs) -> None:
        """__fprobe_handler: a rethook node first when there is an exit handler (none: missed);
        the entry handler and rethook_hook get ftrace_get_regs(fregs), the full pt_regs."""
        regs = fregs.ftrace_get_regs()
        node = data = None
        if fp.exit_handler:
            node = fp._rethook.try_get()
            if node is None:
                fp.nmissed += 1
                return
            data = node.data
        skip = fp.entry_handler(fp, ip, parent_ip, regs, data) if fp.entry_handler else 0
        if node is not None:
            if skip:  # not counted as missed
                fp._rethook.recycle(node)
            else:
                fp._rethook.hook(node, regs, ip)

    def _rethook_exit(self, fp: Fprobe, node, regs) -> None:
        if fp.disabled:
            return
        recursion = self.ftrace.recursion
        bit = recursion.trylock(node.func, node.ret_addr, recursion.FTRACE_START)
        if bit < 0:
            fp.nmissed += 1
            return
        try:
            fp.exit_handler(fp, node.func, node.ret_addr, regs, node.data)
        finally:
            recursion.unlock(bit)
