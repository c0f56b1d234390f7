"""The BPF helpers and kfuncs tracing programs call, with the kernel's semantics and errnos
(kernel/trace/bpf_trace.c, kernel/bpf/helpers.c, stackmap.c, ringbuf.c; v7.0).

Each helper takes the run's BpfRun (what bpf_run_ctx and the ctx's pt_regs give the kernel's) and
r1..r5, and returns r0. Which helpers a program may call is its program type's func_proto:
`KPROBE_HELPERS` (kprobe, kretprobe and the kprobe.multi family: BPF_PROG_TYPE_KPROBE) and
`TRACING_HELPERS` (fentry, fexit, fmod_ret: BPF_PROG_TYPE_TRACING, whose bpf_get_func_* calls the
verifier has already turned into ctx loads).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from emulator import FtlabError

from .bprintf import BprintfError, bprintf
from .jhash import jhash2

EFAULT, EINVAL, EEXIST = 14, 22, 17
MASK64 = (1 << 64) - 1
BPF_F_SKIP_FIELD_MASK = 0xFF
BPF_F_USER_STACK = 1 << 8
BPF_F_FAST_STACK_CMP = 1 << 9
BPF_F_REUSE_STACKID = 1 << 10
BPF_F_USER_BUILD_ID = 1 << 11
PERF_MAX_STACK_DEPTH = 127  # sysctl_perf_event_max_stack's default
MAX_TRACE_PRINTK_ARGS = 3
MAX_BPRINTF_VARARGS = 12
TASK_COMM = b"ftlab"  # the lab's one task, as the trace output names it
PID = 1


def neg(errno: int) -> int:
    """-errno as r0 holds it (a u64)."""
    return -errno & MASK64


@dataclass
class BpfRun:
    """One program run: its route and what bpf_run_ctx holds there."""

    prog: str
    route: str
    regs: object | None  # the PtRegs ctx points to (kprobe routes), else None
    func_ip: int  # bpf_get_func_ip's answer (kprobe routes: the function, or 0 off its entry)
    cookie: int = 0  # bpf_get_attach_cookie
    is_return: bool = False  # kprobe.session: the exit run
    session_cookie: int = 0  # kprobe.session: the guest address of the 8-byte cookie


class BpfHelpers:
    """The helpers, bound to one lab: its memory, maps, the trace clock, printk's output and the
    kernel stack unwinder."""

    def __init__(
        self,
        machine,
        karch,
        maps,
        *,
        clock: Callable[[], int],
        printk: Callable[[BpfRun, str], None],
        unwind: Callable[[object], list[int]],
    ):
        """maps: the loaded objects' maps by address (map_at(addr) -> Map | None, and
        ringbuf_of(addr) -> (Map, record) for a reserved record); unwind(regs) -> the kernel
        stack from regs (perf_callchain_kernel), or [] where user_mode(regs) says it has none."""
        self.m, self.karch, self.maps = machine, karch, maps
        self.clock, self.printk, self.unwind = clock, printk, unwind
        self.prandom = random.Random(0)  # deterministic: the same numbers on every host
        self.stack_buckets: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}  # (map, id) -> (hash, ips)
        common = {
            1: self.map_lookup_elem,
            2: self.map_update_elem,
            3: self.map_delete_elem,
            4: self.probe_read_kernel,  # bpf_probe_read: kernel and user addresses do not overlap
            5: self.ktime_get_ns,
            6: self.trace_printk,
            7: self.get_prandom_u32,
            8: self.get_smp_processor_id,
            14: self.get_current_pid_tgid,
            16: self.get_current_comm,
            45: self.probe_read_kernel_str,
            113: self.probe_read_kernel,
            115: self.probe_read_kernel_str,
            130: self.ringbuf_output,
            131: self.ringbuf_reserve,
            132: self.ringbuf_submit,
            133: self.ringbuf_discard,
            174: self.get_attach_cookie,
            177: self.trace_vprintk,
        }
        self.kprobe = {
            **common,
            27: self.get_stackid,
            58: self.override_return,
            67: self.get_stack,
            173: self.get_func_ip,
        }
        self.tracing = dict(common)
        self.kfuncs = {1: self.session_is_return, 2: self.session_cookie}

    # -- maps ---------------------------------------------------------------------------------

    def _map(self, addr: int):
        found = self.maps.map_at(addr)
        if found is None:
            raise FtlabError(f"bpf: {addr:#x} is not a map")
        return found

    def map_lookup_elem(self, run: BpfRun, map_addr: int, key: int, *_) -> int:
        bmap = self._map(map_addr)
        return bmap.lookup(self.m.read(key, bmap.spec.key_size))

    def map_update_elem(self, run: BpfRun, map_addr: int, key: int, value: int, flags: int, _=0) -> int:
        bmap = self._map(map_addr)
        key_size, value_size = bmap.spec.key_size, bmap.spec.value_size
        return bmap.update(self.m.read(key, key_size), self.m.read(value, value_size), flags) & MASK64

    def map_delete_elem(self, run: BpfRun, map_addr: int, key: int, *_) -> int:
        bmap = self._map(map_addr)
        return bmap.delete(self.m.read(key, bmap.spec.key_size)) & MASK64

    # -- memory -------------------------------------------------------------------------------

    def _read(self, addr: int, size: int) -> bytes | None:
        try:
            return self.m.read(addr, size)
        except FtlabError:
            return None

    def probe_read_kernel(self, run: BpfRun, dst: int, size: int, src: int, *_) -> int:
        """copy_from_kernel_nofault: on a fault dst is zeroed and -EFAULT returned."""
        data = self._read(src, size)
        self.m.write(dst, data if data is not None else bytes(size))
        return 0 if data is not None else neg(EFAULT)

    def _string(self, addr: int, limit: int) -> bytes | None:
        """strncpy_from_kernel_nofault: up to limit bytes, stopping after a NUL; None on a fault."""
        out = bytearray()
        while len(out) < limit:
            byte = self._read(addr + len(out), 1)
            if byte is None:
                return None
            out += byte
            if byte == b"\0":
                break
        return bytes(out)

    def probe_read_kernel_str(self, run: BpfRun, dst: int, size: int, src: int, *_) -> int:
        """The string's length with its NUL (at most size, NUL-terminated); -EFAULT with dst zeroed."""
        if size == 0:
            return 0
        got = self._string(src, size)
        if got is None:
            self.m.write(dst, bytes(size))
            return neg(EFAULT)
        if not got.endswith(b"\0"):
            got = got[: size - 1] + b"\0"
        self.m.write(dst, got)
        return len(got)

    # -- time, ids, randomness ------------------------------------------------------------------

    def ktime_get_ns(self, run: BpfRun, *_) -> int:
        return self.clock() & MASK64

    def get_prandom_u32(self, run: BpfRun, *_) -> int:
        return self.prandom.getrandbits(32)

    def get_smp_processor_id(self, run: BpfRun, *_) -> int:
        return 0

    def get_current_pid_tgid(self, run: BpfRun, *_) -> int:
        return PID << 32 | PID

    def get_current_comm(self, run: BpfRun, buf: int, size: int, *_) -> int:
        """strscpy_pad: the comm, NUL-padded to size."""
        if size == 0:
            return neg(EINVAL)
        comm = TASK_COMM[: size - 1]
        self.m.write(buf, comm + bytes(size - len(comm)))
        return 0

    # -- printk -------------------------------------------------------------------------------

    def trace_printk(self, run: BpfRun, fmt: int, fmt_size: int, a1: int, a2: int, a3: int) -> int:
        return self._print(run, fmt, fmt_size, [a1, a2, a3])

    def trace_vprintk(self, run: BpfRun, fmt: int, fmt_size: int, data: int, data_len: int, _=0) -> int:
        """The args are an array of u64s (bpf_printk with more than three arguments)."""
        if data_len % 8 or data_len > 8 * MAX_BPRINTF_VARARGS or (data_len and not data):
            return neg(EINVAL)
        raw = self._read(data, data_len) if data_len else b""
        if raw is None:
            return neg(EFAULT)
        return self._print(run, fmt, fmt_size, list(struct.unpack(f"<{data_len // 8}Q", raw)))

    def _print(self, run: BpfRun, fmt_addr: int, fmt_size: int, args: list[int]) -> int:
        raw = self._read(fmt_addr, fmt_size) if fmt_size else None
        if raw is None or b"\0" not in raw:  # the format must be NUL-terminated within fmt_size
            return neg(EINVAL)
        try:
            text = bprintf(raw[: raw.index(b"\0")], args, lambda a: self._string(a, 512), self._symbol)
        except BprintfError:
            return neg(EINVAL)
        self.printk(run, text)
        return len(text.encode("latin-1"))

    def _symbol(self, addr: int, with_offset: bool) -> str:
        hit = self.m.symbols.lookup(addr)
        if hit is None:
            return f"{addr:#x}"
        sym, off = hit
        return f"{sym.name}+{off:#x}/{sym.size:#x}" if with_offset else sym.name

    # -- ring buffer --------------------------------------------------------------------------

    def ringbuf_output(self, run: BpfRun, map_addr: int, data: int, size: int, flags: int, _=0) -> int:
        raw = self._read(data, size)
        if raw is None:
            return neg(EFAULT)
        return self._map(map_addr).output(raw, flags) & MASK64

    def ringbuf_reserve(self, run: BpfRun, map_addr: int, size: int, flags: int, *_) -> int:
        return self._map(map_addr).reserve(size, flags)

    def ringbuf_submit(self, run: BpfRun, sample: int, flags: int, *_) -> int:
        self.maps.ringbuf_of(sample).submit(sample)
        return 0

    def ringbuf_discard(self, run: BpfRun, sample: int, flags: int, *_) -> int:
        self.maps.ringbuf_of(sample).discard(sample)
        return 0

    # -- the attach point ---------------------------------------------------------------------

    def get_func_ip(self, run: BpfRun, *_) -> int:
        return run.func_ip

    def get_attach_cookie(self, run: BpfRun, *_) -> int:
        return run.cookie & MASK64

    def override_return(self, run: BpfRun, ctx: int, rc: int, *_) -> int:
        """regs_set_return_value(regs, rc); override_function_with_return(regs): written into the
        pt_regs ctx points to. Whether that reaches the function is the route's business (arm64's
        kprobe.multi copy before 7.0 dropped it)."""
        regs = run.regs
        regs.set_reg(self.m.arch.ret_regs[0], rc)  # type: ignore[attr-defined]
        regs.override_function_with_return()  # type: ignore[attr-defined]
        return 0

    def session_is_return(self, run: BpfRun, *_) -> int:
        return int(run.is_return)

    def session_cookie(self, run: BpfRun, *_) -> int:
        return run.session_cookie

    # -- stacks (kernel/bpf/stackmap.c) --------------------------------------------------------

    def _callchain(self, run: BpfRun, flags: int, max_depth: int) -> list[int] | None:
        """get_perf_callchain(regs, kernel = !user, user): the kernel part only where
        !user_mode(regs); the lab has no user stack. None: no callchain entry (never here)."""
        if flags & BPF_F_USER_STACK:
            return []
        return self.unwind(run.regs)[: min(max_depth, PERF_MAX_STACK_DEPTH)]

    def get_stackid(self, run: BpfRun, ctx: int, map_addr: int, flags: int, *_) -> int:
        allowed = BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID
        if flags & ~allowed:
            return neg(EINVAL)
        stackmap = self._map(map_addr)
        skip = flags & BPF_F_SKIP_FIELD_MASK
        trace = self._callchain(run, flags, stackmap.spec.value_size // 8 + skip)
        if trace is None or len(trace) <= skip:  # __bpf_get_stackid: an empty trace is -EFAULT
            return neg(EFAULT)
        return self._store_stack(stackmap, tuple(trace[skip:]), flags) & MASK64

    def _store_stack(self, stackmap, ips: tuple[int, ...], flags: int) -> int:
        """__bpf_get_stackid's bucket logic: the id is jhash2 of the ips masked to the buckets (a
        power of 2 at least max_entries); a bucket holding another stack is -EEXIST unless
        BPF_F_REUSE_STACKID lets the new one replace it."""
        data = struct.pack(f"<{len(ips)}Q", *ips)
        digest = jhash2(data, 0)
        sid = digest & ((1 << (stackmap.spec.max_entries - 1).bit_length()) - 1)
        bucket = self.stack_buckets.get((stackmap.addr, sid))
        if bucket is not None and bucket[0] == digest and flags & BPF_F_FAST_STACK_CMP:
            return sid
        if bucket is not None and bucket[1] == ips:
            return sid
        if bucket is not None and not flags & BPF_F_REUSE_STACKID:
            return neg(EEXIST)
        self.stack_buckets[(stackmap.addr, sid)] = (digest, ips)
        value = data + bytes(stackmap.spec.value_size - len(data))
        stackmap.update(struct.pack("<I", sid), value, 0)
        return sid

    def get_stack(self, run: BpfRun, ctx: int, buf: int, size: int, flags: int, _=0) -> int:
        if flags & ~(BPF_F_SKIP_FIELD_MASK | BPF_F_USER_STACK | BPF_F_USER_BUILD_ID) or size % 8:
            self.m.write(buf, bytes(size))
            return neg(EINVAL)
        if not flags & BPF_F_USER_STACK and flags & BPF_F_USER_BUILD_ID:
            self.m.write(buf, bytes(size))
            return neg(EINVAL)
        skip = flags & BPF_F_SKIP_FIELD_MASK
        trace = self._callchain(run, flags, size // 8 + skip)
        if trace is None or len(trace) < skip:
            self.m.write(buf, bytes(size))
            return neg(EFAULT)
        ips = trace[skip:][: size // 8]
        data = struct.pack(f"<{len(ips)}Q", *ips)
        self.m.write(buf, data + bytes(size - len(data)))
        return len(data)
