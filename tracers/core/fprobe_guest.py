"""fprobe's dispatch in guest code (tracers/arch/<arch>/fprobe.S), for fprobes whose handlers are
guest code too (trace_fprobe's probe events): fprobe_fgraph_entry and fprobe_return as fgraph's
lone user (kernel/trace/fprobe.c, v6.19), and fprobe_ftrace_entry as fprobe_ftrace_ops' function.
They find an address's fprobes in an ip table, as the kernel's fprobe_ip_table, and push and pop
the same shadow-stack words as the Python path (fprobe.py, fgraph.py), so either path can pop what
the other pushed. One registry at a time uses it (`owner`).

A guest handler is (code, data), called as code(data, ip, ret_ip, fregs, entry_data); an entry
handler's non-zero return skips the exit. An fprobe whose handlers are Python gets the stubs
fprobe_python_entry / fprobe_python_exit, which enter Python for the handler alone (data: the
fprobe's id; the owner registry's python_entry / python_exit call it), with fgraph's bookkeeping
and fprobe's walk left in guest code. A batched fprobe (fprobe_batch.py) gets the batched handlers,
which record the hit in the ring buffer and enter no Python."""

from __future__ import annotations

import struct
from typing import Any

from emulator.layout import Layout

from . import fgraph, ip_table
from .ip_table import IpTable

FPROBE_CONTROL = Layout.of("fprobe guest control", ("fgraph", "graph_ips", "ftrace_ips", "ids", "bitmap"))
GUEST_FPROBE = Layout.of("guest fprobe", ("id", "entry", "entry_data", "exit", "exit_data", "words", "nmissed"))
# then the guest fprobes' addresses; entries: how many have an entry handler
FPROBE_AT = Layout.of("fprobe list", ("need", "header", "nr", "entries"))
# what a Python handler's stub leaves in its mailbox, and the handler's return value
PY_ARGS = Layout.of("fprobe python args", ("id", "ip", "ret_ip", "fregs", "data", "result"))
PY_ARGS_GET = PY_ARGS.getter("id", "ip", "ret_ip", "fregs", "data")
RESULT = PY_ARGS.index("result")
U64 = struct.Struct("<Q")


class FprobeCode:
    def __init__(self, ftrace, fgraph_core):
        m, karch = ftrace.m, ftrace.karch
        self.m, self.fgraph = m, fgraph_core
        syms = karch.load(
            m,
            "fprobe.S",
            {
                **fgraph.asm_constants(karch),
                **ip_table.asm_constants(),
                **FPROBE_CONTROL.asm_constants("FPC_"),
                **GUEST_FPROBE.asm_constants("GFP_"),
                **FPROBE_AT.asm_constants("FPROBE_AT_"),
                **PY_ARGS.asm_constants("PY_ARGS_"),
                "FGRAPH_MAX_DATA_SIZE": fgraph.FGRAPH_MAX_DATA_SIZE,
            },
        )
        self.graph_entry, self.graph_return = syms["fprobe_fgraph_entry"], syms["fprobe_return"]
        self.ftrace_entry = syms["fprobe_ftrace_entry"]
        self.control = m.alloc("lab data", FPROBE_CONTROL.size, 64)
        m.write_code(syms["fp_control"], U64.pack(self.control))
        self.graph_ips, self.ftrace_ips = IpTable(m), IpTable(m)
        self._arena, self._arena_size = 0, 0
        self._put(fgraph=fgraph_core.control, graph_ips=self.graph_ips.addr, ftrace_ips=self.ftrace_ips.addr)
        bad_fp = syms.get("fprobe_bad_fp")  # where the frame pointer is checked on return
        if bad_fp is not None:
            m.hook_call(lambda _addr: fgraph_core.bad_frame_pointer(), bad_fp)
        m.hook_call(lambda _addr: fgraph_core.empty_shadow_stack(), syms["fprobe_empty"])
        self.python_entry, self.python_exit = syms["fprobe_python_entry"], syms["fprobe_python_exit"]
        for stub, call in ((self.python_entry, self._entry), (self.python_exit, self._exit)):
            mailbox = m.mailbox(stub, syms[f"{m.symbols.name(stub)}_args"], PY_ARGS)
            m.hook_call(lambda _addr, box=mailbox, call=call: call(box), syms[f"{m.symbols.name(stub)}_lab"])
        self.owner: Any = None  # the Fprobes registry using the guest dispatch (fprobe.py)
        self.batch: Any = None  # the lab's batched handlers (fprobe_batch.FprobeBatch), set by the lab

    def _entry(self, box) -> None:
        owner = self.owner
        assert owner is not None  # only a registry that owns the dispatch has its fprobes in it
        box[RESULT] = owner.python_entry(*PY_ARGS_GET(box))

    def _exit(self, box) -> None:
        owner = self.owner
        assert owner is not None
        owner.python_exit(*PY_ARGS_GET(box))

    def _put(self, **values) -> None:
        for name, value in values.items():
            self.m.write(self.control + FPROBE_CONTROL.offsets[name], U64.pack(value))

    def descriptor(self, fp) -> int:
        """A new guest fprobe for fp (its handlers, its entry data's words, a zero nmissed)."""
        addr = self.m.alloc("lab data", GUEST_FPROBE.size, 64)
        # a batched fprobe's handlers record the hit (fprobe_batch.py); its data is its key
        py_entry, py_exit, key = (
            (self.batch.entry, self.batch.exit, fp._batch_key)
            if fp.batched
            else (self.python_entry, self.python_exit, fp.id)
        )
        entry, entry_data = fp.guest_entry or ((py_entry, key) if fp.entry_handler else (0, 0))
        exit_, exit_data = fp.guest_exit or ((py_exit, key) if fp.exit_handler else (0, 0))
        words = -(-fp.entry_data_size // 8)
        self.m.write(addr, GUEST_FPROBE.codec.pack(fp.id, entry, entry_data, exit_, exit_data, words, 0))
        return addr

    def nmissed(self, desc: int) -> int:
        return self.m.u64(desc + GUEST_FPROBE.offsets["nmissed"])

    def publish(self, graph: dict[int, tuple[int, list[int]]], ftrace: dict[int, list[int]], ids: dict[int, int], gops):
        """The tables: ip -> its fprobes' descriptors (in registration order) for the fgraph user,
        each list with the bytes its exits reserve (Fprobes._at's) and the data header that
        reservation pushes, and for fprobe_ftrace_ops; fprobe id -> descriptor, for the exit's walk.
        The lists and the id table share one arena, reused while it is big enough."""
        frame_words = self.fgraph.frame_words
        blob = bytearray(U64.pack(0) * (max(ids, default=0) + 1))  # the id table first
        for i, desc in ids.items():
            U64.pack_into(blob, 8 * i, desc)
        lists: list[dict[int, int]] = [{}, {}]
        for table, entries in enumerate((graph, {ip: (0, descs) for ip, descs in ftrace.items()})):
            for ip, (need, descs) in entries.items():
                words = need // 8
                header = fgraph.make_data_type_val(gops.idx, words, frame_words + words + 1) if need else 0
                lists[table][ip] = len(blob)
                entry = sum(1 for d in descs if self.m.u64(d + GUEST_FPROBE.offsets["entry"]))
                blob += FPROBE_AT.codec.pack(need, header, len(descs), entry) + b"".join(U64.pack(d) for d in descs)
        if len(blob) > self._arena_size:
            self._arena, self._arena_size = self.m.alloc("lab data", len(blob), 64), len(blob)
        self.m.write(self._arena, bytes(blob))
        self.graph_ips.fill({ip: self._arena + at for ip, at in lists[0].items()})
        self.ftrace_ips.fill({ip: self._arena + at for ip, at in lists[1].items()})
        bitmap = fgraph.make_bitmap_type_val(1 << gops.idx | fgraph.FGRAPH_RET_INDEX_BIT, frame_words) if graph else 0
        self._put(ids=self._arena, bitmap=bitmap)
