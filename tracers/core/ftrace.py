"""The ftrace core, after kernel/trace/ftrace.c: patch sites, ftrace_ops and their dispatch.

Arch-neutral: every encoding comes from the KernelArch description, every trampoline from
tracers/arch/<arch>/*.S.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntFlag
from fnmatch import fnmatchcase

from emulator import FtlabError
from emulator.layout import Layout
from emulator.symbols import Symbol

from ..arch import kernel_arch
from ..arch.base import SiteEncoding
from ..kernel_version import MODELLED, KernelVersion
from . import ip_table
from .ip_table import IpTable
from .regs import FtraceRegs
from .return_watch import ReturnWatch
from .verify import Verify

U64 = struct.Struct("<Q")
# ftrace_ops_list_func's mailbox: its arguments, as the stub in ftrace_caller.S leaves them
OPS_LIST_ARGS = Layout.of("ops_list_args", ("ip", "parent_ip", "op", "fregs"))
DISPATCH_ARGS = OPS_LIST_ARGS.getter("ip", "parent_ip", "op", "fregs")
# struct ftrace_ops as guest code reads it (asm-offsets FTRACE_OPS_FUNC, FTRACE_OPS_DIRECT_CALL):
# arm64's CALL_OPS ftrace_caller calls op->func and branches to op->direct_call
FTRACE_OPS = Layout.of("ftrace_ops", ("func", "direct_call"))
# The guest list dispatch's table (ops_list.S): an ip table (ip_table.py) of each enabled site's
# list, the zero-terminated (func, op) pairs of the ops tracing it
OPS_PAIR = Layout.of("ops_pair", ("func", "op"))


def _words(layout: Layout, **values: int) -> list[int]:
    """The layout's u64 words with these slots set, the rest 0."""
    words = [0] * layout.nr_words
    for name, value in values.items():
        words[layout.index(name)] = value
    return words


class OpsFlag(IntFlag):
    NONE = 0
    RECURSION = 1  # FTRACE_OPS_FL_RECURSION: ftrace guards the callback (ftrace_ops_assist_func)
    SAVE_REGS = 2  # FTRACE_OPS_FL_SAVE_REGS: a full pt_regs (ftrace_regs_caller)
    SAVE_REGS_IF_SUPPORTED = 4  # ... if the arch can; else ftrace_get_regs() is NULL


@dataclass(eq=False)
class FtraceOps:
    """struct ftrace_ops: a callback func(ip, parent_ip, op, fregs) and the sites it wants."""

    func: Callable[[int, int, FtraceOps, FtraceRegs], None]
    flags: OpsFlag = OpsFlag.NONE
    name: str = "ops"
    filter: set[int] = field(default_factory=set)  # empty: every site (the kernel's empty hash)
    notrace: set[int] = field(default_factory=set)
    guest_func: int | None = None  # the same callback in guest code, if there is one
    direct_call: int | None = None  # register_ftrace_direct: the trampoline its sites reach
    addr: int | None = None  # its struct ftrace_ops in guest memory: CALL_OPS, the guest ops list

    def traces(self, ip: int) -> bool:
        return (not self.filter or ip in self.filter) and ip not in self.notrace

    @property
    def wants_regs(self) -> bool:
        return bool(self.flags & (OpsFlag.SAVE_REGS | OpsFlag.SAVE_REGS_IF_SUPPORTED))


class TraceRecursion:
    """current->trace_recursion for the lab's one task, always in normal context
    (include/linux/trace_recursion.h, v6.17). trace_test_and_set_recursion(ip, parent_ip, start)
    takes the normal-context bit of a set: TRACE_FTRACE_START for ftrace_test_recursion_trylock()
    in callbacks, TRACE_LIST_START for ftrace_ops_list_func and ftrace_ops_assist_func. If that bit
    is held, the set's transition bit (TRACE_CTX_TRANSITION, for an interrupt that came before
    preempt_count said so) lets one nested level through; the next is refused, and recorded as
    CONFIG_FTRACE_RECORD_RECURSION does (recursed_functions: each function once)."""

    FTRACE_START, LIST_START = 0, 5  # TRACE_FTRACE_BIT, TRACE_INTERNAL_BIT
    CTX_NORMAL, CTX_TRANSITION = 3, 4

    def __init__(self):
        self.val = 0
        self.recursed_functions: dict[int, int] = {}  # ip -> parent_ip, as ftrace_record_recursion

    def trylock(self, ip: int, parent_ip: int, start: int) -> int:
        """-1 when refused, else the bit to give back to unlock."""
        bit = start + self.CTX_NORMAL
        if self.val >> bit & 1:
            bit = start + self.CTX_TRANSITION
            if self.val >> bit & 1:
                self.recursed_functions.setdefault(ip, parent_ip)
                return -1
        self.val |= 1 << bit
        return bit

    def unlock(self, bit: int) -> None:
        self.val &= ~(1 << bit)


@dataclass(eq=False)
class Site:
    """struct dyn_ftrace: one patch site, and the bytes of each of its states."""

    ip: int  # the instruction that becomes the call (rec->ip)
    func: Symbol
    addr: int  # first byte init rewrites (arm64: the MOV X9, LR before ip)
    compiled: bytes
    disabled: bytes  # after ftrace_init_nop
    enabled: bytes  # calling ftrace_caller
    literal: int | None  # arm64 CALL_OPS: the 8-byte ftrace_ops pointer before the function
    encoding: SiteEncoding  # its kind (fentry, patchable, mcount) and that kind's trampolines
    target: int | None = None  # the trampoline it calls now (None: disabled)

    @property
    def on(self) -> bool:
        return self.target is not None

    def calling(self, target: int | None) -> bytes:
        """The bytes at ip when the site calls target (None: the disabled NOP). Only these change
        at run time, as ftrace_make_call/ftrace_make_nop do; arm64's MOV X9, LR is written once."""
        return self.encoding.nop if target is None else self.encoding.encode_call(self.ip, target)


@dataclass(frozen=True)
class Callers:
    """The trampolines one kind of site calls: ftrace_caller, ftrace_regs_caller if it has one, and
    the CALL_OPS build of ftrace_caller for sites with a literal, if the arch has them."""

    caller: int
    regs_caller: int | None
    ops_caller: int | None

    def for_site(self, site_literal: int | None) -> int:
        return self.ops_caller if site_literal is not None and self.ops_caller is not None else self.caller


class Ftrace:
    SOURCE = "ftrace_caller.S"

    def __init__(self, machine, karch=None, kernel: KernelVersion = MODELLED):
        """karch: the kernel's arch code, by default the lab's own (KernelArch.replacing gives one
        with a user's trampolines, which every core built on this one loads); kernel: the release,
        which decides whether CALL_OPS literals are used."""
        self.m = machine
        self.karch = karch = karch or kernel_arch(machine.arch)
        constants = {**OPS_LIST_ARGS.asm_constants("OPS_LIST_ARGS_"), **FTRACE_OPS.asm_constants("FTRACE_OPS_")}
        syms = karch.load(machine, self.SOURCE, constants)
        self.callers = {
            e.name: Callers(
                syms[e.caller],
                syms[e.regs_caller] if e.regs_caller else None,
                syms[e.ops_caller] if e.ops_caller and (not e.call_ops_since or kernel.has(e.call_ops_since)) else None,
            )
            for e in karch.site_encodings
        }
        self.caller = self.callers[karch.sites.name].caller
        self.regs_caller = self.callers[karch.sites.name].regs_caller  # x86 only: DYNAMIC_FTRACE_WITH_REGS
        self.list_func = syms["ftrace_ops_list_func"]
        # the trampolines' patchable calls of the ops function (ftrace_update_ftrace_func)
        self._call_sites = {syms[c]: self.list_func for e in karch.site_encodings for c in e.calls}
        self.list_ops = self._guest_ops(self.list_func)  # ftrace_list_ops, passed as op
        machine.write_code(syms["function_trace_op"], U64.pack(self.list_ops))
        # ftrace_nop_ops: what a disabled CALL_OPS site's literal points at
        call_ops = any(c.ops_caller for c in self.callers.values())
        self.nop_ops = self._guest_ops(syms["ftrace_stub"]) if call_ops else None
        self.ops_at: dict[int, FtraceOps] = {}  # guest struct ftrace_ops -> its ops
        self.sites: list[Site] = []
        self.by_ip: dict[int, Site] = {}
        self.ops: list[FtraceOps] = []  # ftrace_ops_list, oldest first
        self.recursion = TraceRecursion()
        self._args = machine.mailbox(syms["ftrace_ops_list_func"], syms["ops_list_args"], OPS_LIST_ARGS)
        machine.hook_call(self._dispatch, syms["ftrace_ops_list_lab"])
        # verify mode's owner for every core on this machine; ftrace's snapshots stand at its sites
        self.verify = Verify(machine)
        self.verify.add(self, "ftrace", lambda: [s.ip for s in self.sites if s.on], self._update)
        self._guest_list: int | None = None  # ops_list.S, loaded when first needed
        self._table: IpTable | None = None  # its ip table of lists
        self._pairs = self._pairs_room = 0  # the lists, and their room
        self._returns = None
        if karch.is_replaced(self.SOURCE):  # a user's trampoline: watch where it returns
            start = min(syms.values())
            span = range(start, machine.alloc("lab text", 0, 1))
            self._returns = ReturnWatch(machine, span)

    # -- sites (ftrace_process_locs, ftrace_init_nop) --------------------------------------------

    def add_object(self, obj) -> list[Site]:
        """The object's sites, of the one kind its build made (KernelArch.site_encoding), found
        and initialised (ftrace_init_nop)."""
        m = self.m
        enc = self.karch.site_encoding(obj.imports)
        called = [m.symbols.get(s) for s in enc.call_symbols if s in m.symbols]
        mcount = called[0].addr if called else None  # MCOUNT_ADDR: what the compiled sites call
        added = []
        for recorded in sorted(set(self._recorded(obj, enc))):
            ip, literal = enc.adjust(recorded, m.read, m.symbols.is_function_start)
            hit = m.symbols.lookup(ip)
            if hit is None or hit[0].kind != "func":
                hit = (self._unnamed_function(obj, ip), 0)
            start = ip - enc.window
            compiled = m.read(start, enc.window + enc.size)
            disabled = enc.init(ip, compiled, mcount)
            if disabled is None:
                raise FtlabError(
                    f"{obj.path}: unrecognised {enc.name} patch site at {m.where(ip)} (bytes {compiled.hex(' ')})"
                )
            m.patch(start, compiled, disabled)
            if literal is not None and self.nop_ops is not None:  # ftrace_rec_set_nop_ops
                m.patch(literal, m.read(literal, 8), U64.pack(self.nop_ops))
            enabled = disabled[: enc.window] + enc.encode_call(ip, self.callers[enc.name].for_site(literal))
            site = Site(ip, hit[0], start, compiled, disabled, enabled, literal, enc)
            self.sites.append(site)
            self.by_ip[ip] = site
            added.append(site)
        return added

    def _unnamed_function(self, obj, ip: int) -> Symbol:
        """A site in code no function symbol covers (a stripped local function: kvm.ko's
        `call __fentry__; jmp` stubs): the kernel's ftrace records it all the same and prints it
        as its address (%ps); the lab names it so, up to the next symbol. A site outside the
        object's code is an error."""
        section = next(((a, size) for a, size in obj.text if a <= ip < a + size), None)
        if section is None:
            raise FtlabError(f"{obj.path}: patch site at {ip:#x} is outside the object's code")
        end = self.m.symbols.next_start(ip, section[0] + section[1])
        sym = Symbol(f"{ip:#x}", ip, end - ip, "func", "unnamed")
        self.m.symbols.add(sym)
        return sym

    def _recorded(self, obj, enc: SiteEncoding) -> list[int]:
        """Site addresses from the compiler's tables, else from calls to the mcount symbol."""
        addrs: list[int] = []
        for table in enc.tables:
            for addr, size in obj.sections.get(table, []):
                if size % 8:
                    raise FtlabError(f"{obj.path}: {table} is {size:#x} bytes, not a whole number of 8-byte addresses")
                addrs += struct.unpack(f"<{size // 8}Q", self.m.read(addr, size))
        if not addrs:
            for sym in enc.call_symbols:
                addrs += [place + enc.offset_from_reloc for place in obj.imports.get(sym, [])]
        return addrs

    def uncaptured(self) -> dict[int, tuple[str, ...]]:
        """Site ip -> the ftrace_regs members its trampoline stores but, at that kind of site, does
        not capture (arm64 -pg: x0), for decoding the records that copy every member."""
        every = self.karch.ftrace_regs_saved
        out = {}
        for s in self.sites:
            if s.encoding.saved is not None and (lost := tuple(m for m in every if m not in s.encoding.saved)):
                out[s.ip] = lost
        return out

    def site(self, func: str) -> Site:
        found = next((s for s in self.sites if s.func.name == func), None)
        if found is None:
            raise FtlabError(f"'{func}' has no patch site (traceable: {', '.join(s.func.name for s in self.sites)})")
        return found

    # -- ops (register_ftrace_function, ftrace_set_filter) ----------------------------------------

    def _guest_ops(self, func: int) -> int:
        """A struct ftrace_ops in lab data, with its func."""
        addr = self.m.alloc("lab data", FTRACE_OPS.size, 64)
        self.m.write(addr + FTRACE_OPS.offsets["func"], U64.pack(func))
        return addr

    def register(self, ops: FtraceOps, at: int | None = None) -> None:
        """register_ftrace_function; at: its place in the list (default the newest), for fgraph's
        graph_ops, which keeps its place when only its hash changes (ftrace_startup_subops)."""
        if ops in self.ops:
            raise FtlabError(f"ftrace_ops '{ops.name}' is already registered")
        if ops.flags & OpsFlag.SAVE_REGS and self.regs_caller is None:
            raise FtlabError(f"ftrace_ops '{ops.name}' asks for SAVE_REGS: {self.karch.no_regs_caller_reason}")
        if ops.addr is None and self.nop_ops is not None:  # for CALL_OPS literals: its func is the
            ops.addr = self._guest_ops(self.list_func)  # lab's dispatch, which finds it by address
            self.ops_at[ops.addr] = ops
        self._write_direct_call(ops)
        self.ops.insert(len(self.ops) if at is None else at, ops)
        self._update()

    # -- direct calls (register_ftrace_direct, kernel/trace/ftrace.c) -----------------------------

    def direct_unsupported(self, site: Site) -> str | None:
        """Why the site cannot reach a direct trampoline, or None."""
        direct = self.karch.direct_calls
        if site.encoding.after_prologue:
            # register_ftrace_direct() (763e34e74bb7, 5.5) came after x86 dropped mcount (5.2) and
            # arm64 left -pg: a direct trampoline takes the arguments and return address as they
            # are at the function's first instruction, which a site after the prologue is not
            return (
                f"{site.encoding.name} sites come after the prologue; direct calls (5.5) only ever "
                "reached a site at the function's entry"
            )
        if direct.needs_call_ops and site.literal is None:
            return direct.unsupported
        return None

    def register_direct(self, ops: FtraceOps, addr: int) -> None:
        """register_ftrace_direct(ops, addr): ops->func = call_direct_funcs, ops->direct_call =
        addr, on the sites of its filter, each of which may have one direct ops (-EBUSY). Without
        ftrace_regs_caller the ops asks for ftrace_regs only (MULTI_FLAGS: SAVE_ARGS)."""
        if not ops.filter:
            raise FtlabError(f"register_ftrace_direct: ftrace_ops '{ops.name}' has no filter (-EINVAL)")
        for other in self.ops:
            if other.direct_call is not None and other.filter & ops.filter:
                raise FtlabError(
                    f"register_ftrace_direct: '{ops.name}' shares a site with the direct ops '{other.name}' (-EBUSY)"
                )
        for site in (self.by_ip[ip] for ip in sorted(ops.filter)):
            reason = self.direct_unsupported(site)
            if reason:
                raise FtlabError(f"register_ftrace_direct: {site.func.name}: {reason}")
        ops.func = self._call_direct_funcs
        ops.flags |= OpsFlag.SAVE_REGS if self.regs_caller is not None else OpsFlag.NONE
        ops.direct_call = addr
        self.register(ops)

    def modify_direct(self, ops: FtraceOps, addr: int) -> None:
        """modify_ftrace_direct: the ops' sites reach a new trampoline (a regenerated image)."""
        ops.direct_call = addr
        self._write_direct_call(ops)
        self._update()

    def _write_direct_call(self, ops: FtraceOps) -> None:
        if ops.addr is not None:
            self.m.write(ops.addr + FTRACE_OPS.offsets["direct_call"], U64.pack(ops.direct_call or 0))

    def _call_direct_funcs(self, ip: int, parent_ip: int, ops: FtraceOps, fregs: FtraceRegs) -> None:
        """call_direct_funcs: arch_ftrace_set_direct_caller(fregs, ops->direct_call), which the
        trampoline that called the ops list branches to when it returns."""
        if ops.direct_call:
            fregs.set_reg(self.karch.direct_calls.member, ops.direct_call)

    def unregister(self, ops: FtraceOps) -> None:
        if ops not in self.ops:
            raise FtlabError(f"ftrace_ops '{ops.name}' is not registered")
        self.ops.remove(ops)
        self._update()

    def match(self, pattern: str) -> set[int]:
        """Sites whose function matches a set_ftrace_filter glob."""
        ips = {s.ip for s in self.sites if fnmatchcase(s.func.name, pattern)}
        if not ips:
            raise FtlabError(f"filter '{pattern}' matches no traceable function")
        return ips

    def set_filter(self, ops: FtraceOps, patterns, reset: bool = True) -> None:
        """Globs as in set_ftrace_filter; `!glob` removes what it matches."""
        self._set_hash(ops.filter, patterns, reset)

    def set_filter_ips(self, ops: FtraceOps, ips) -> None:
        """ftrace_set_filter_ips(ops, ips, cnt, 0, 1): the filter becomes exactly these sites, on
        a registered ops too (it keeps its place in the list)."""
        ops.filter.clear()
        ops.filter.update(ips)
        self._update()

    def set_notrace(self, ops: FtraceOps, patterns, reset: bool = True) -> None:
        self._set_hash(ops.notrace, patterns, reset)

    def _set_hash(self, hash_: set[int], patterns, reset: bool) -> None:
        if isinstance(patterns, str):
            patterns = [patterns]
        new = set() if reset else set(hash_)
        for p in patterns:
            if p.startswith("!"):
                new -= self.match(p[1:])
            else:
                new |= self.match(p)
        hash_.clear()
        hash_.update(new)
        self._update()

    def _update(self) -> None:
        """ftrace_replace_code: each site calls a trampoline iff some ops wants it; the regs
        trampoline where one of those ops wants a full pt_regs and the arch has one. Then
        ftrace_update_ftrace_func (_ops_func), and the guest list's table if ftrace_call calls it."""
        encode = self.karch.sites.encode_call  # the trampolines' own calls
        func = self._ops_func()
        for addr, current in self._call_sites.items():
            if func != current:
                self.m.patch(addr, encode(addr, current), encode(addr, func))
                self._call_sites[addr] = func
        # newest first, as ftrace_ops_list holds them (add_ftrace_ops puts an ops at its head)
        newest_first = self.ops[::-1]
        lists = {}
        for site in self.sites:
            users = [ops for ops in newest_first if ops.traces(site.ip)]
            target = None
            if len(users) == 1 and users[0].direct_call is not None:
                target = users[0].direct_call  # ftrace_get_addr_new: the direct trampoline itself
            elif users:
                callers = self.callers[site.encoding.name]
                regs = callers.regs_caller is not None and any(ops.wants_regs for ops in users)
                target = callers.regs_caller if regs else callers.for_site(site.literal)
                lists[site.ip] = users
            if target != site.target:
                self.m.patch(site.ip, site.calling(site.target), site.calling(target))
                site.target = target
            if site.literal is not None and self.nop_ops is not None:
                self._set_site_ops(site, users)
        if func == self._guest_list:
            self._write_table(lists)
        if self.nop_ops is not None:
            self._set_ops_funcs(func)
        self.verify.refresh()

    def _ops_func(self) -> int:
        """What ftrace_call calls: the lab may skip the Python dispatch when every ops has guest
        code (not while ftrace is verified: the Python dispatch takes the truth at each site; nor
        from a user's trampoline: the dispatch checks its stack and where it returns). Then a lone
        ops's function is called directly, several through the guest list (ops_list.S)."""
        ops = self.ops
        if not ops or self.verify.held(self) or self._returns is not None or not all(o.guest_func for o in ops):
            return self.list_func
        return (ops[0].guest_func or self.list_func) if len(ops) == 1 else self._load_guest_list()

    def _load_guest_list(self) -> int:
        """ops_list.S and its table, the first time several ops with guest code share ftrace (a lab
        that never needs it keeps its text and data where they were)."""
        if self._guest_list is None:
            constants = {**ip_table.asm_constants(), **OPS_PAIR.asm_constants("OPS_PAIR_")}
            syms = self.karch.load(self.m, "ops_list.S", constants)
            self._table = IpTable(self.m)
            self.m.write_code(syms["ops_hash"], U64.pack(self._table.addr))
            self.m.hook_call(self._not_in_table, syms["ftrace_ops_list_missing"])
            self._guest_list = syms["ftrace_ops_guest_list_func"]
        return self._guest_list

    def _write_table(self, lists: dict[int, list[FtraceOps]]) -> None:
        """The guest list's table, rebuilt: each enabled site's ip -> the (func, op) pairs of its ops,
        op being the ops's own struct ftrace_ops, as the kernel passes it to its func; identical
        lists are stored once."""
        pairs: dict[tuple[FtraceOps, ...], list[int]] = {}
        for users in lists.values():
            for ops in users:
                if ops.addr is None:  # x86: a struct ftrace_ops only for this
                    ops.addr = self._guest_ops(ops.guest_func or 0)
            if (key := tuple(users)) not in pairs:
                words = [w for ops in key for w in _words(OPS_PAIR, func=ops.guest_func or 0, op=ops.addr or 0)]
                pairs[key] = words + _words(OPS_PAIR)  # the terminator: func 0
        room = 8 * sum(len(words) for words in pairs.values())
        if room > self._pairs_room:  # lab data is never freed: grow by doubling
            self._pairs_room = max(room, 2 * self._pairs_room)
            self._pairs = self.m.alloc("lab data", self._pairs_room, 64)
        at, where = self._pairs, {}
        for key, words in pairs.items():
            where[key], at = at, at + 8 * len(words)
        words = [w for ws in pairs.values() for w in ws]
        self.m.write(self._pairs, struct.pack(f"<{len(words)}Q", *words))
        assert self._table is not None  # loaded with the guest list
        self._table.fill({ip: where[tuple(users)] for ip, users in lists.items()})

    def _not_in_table(self, _addr: int) -> None:
        """The guest list found no entry for ip: every enabled site has one, so this is a lab bug."""
        ip = self.m.reg(self.m.arch.arg_regs[0])
        what = "an enabled patch site" if ip in self.by_ip and self.by_ip[ip].on else "not an enabled patch site"
        raise FtlabError(f"ftrace: the guest ops list has no entry for {self.m.where(ip)} ({what})")

    def _set_ops_funcs(self, func: int) -> None:
        """The func of each guest ftrace_ops a CALL_OPS ftrace_caller calls: ftrace_list_ops' is the
        ops function, what ftrace_call is patched to elsewhere (func); an ops's own is its guest code
        when the lab skips the Python dispatch (func is guest code), else that dispatch."""
        self.m.write(self.list_ops + FTRACE_OPS.offsets["func"], U64.pack(func))
        fast = func != self.list_func
        for ops in self.ops:
            own = ops.guest_func if fast and ops.guest_func else self.list_func
            self.m.write(ops.addr + FTRACE_OPS.offsets["func"], U64.pack(own))

    def _set_site_ops(self, site: Site, users: list[FtraceOps]) -> None:
        """The CALL_OPS literal (arm64 ftrace_rec_update_ops): the site's one ops, if ftrace may call
        its func unassisted (FTRACE_FL_CALL_OPS: no FTRACE_OPS_FL_RECURSION), else ftrace_list_ops;
        ftrace_nop_ops while disabled."""
        if not users:
            ops = self.nop_ops
        elif len(users) == 1 and not users[0].flags & OpsFlag.RECURSION:
            ops = users[0].addr
        else:
            ops = self.list_ops
        if self.m.u64(site.literal) != ops:
            self.m.write(site.literal, U64.pack(ops))

    # -- the dispatch (ftrace_ops_list_func, or the lone ops' function) ----------------------------

    def _caller(self, site: Site) -> str:
        """The trampoline the site calls, as messages name it (the user's file, if replaced)."""
        return self.karch.describe(self.SOURCE, self.m.symbols.name(site.target)) if site.target else "ftrace"

    def saved_at(self, site: Site) -> tuple[str, ...]:
        """The ftrace_regs members the trampoline the site calls now stores: ftrace_regs_caller's
        where an ops wants a full pt_regs there, else the site kind's ftrace_caller's."""
        karch, enc = self.karch, site.encoding
        regs_caller = self.callers[enc.name].regs_caller
        return karch.regs_caller.saved if karch.regs_caller and site.target == regs_caller else enc.saved

    def _dispatch(self, _addr: int) -> None:
        """What ftrace_call calls (update_ftrace_function, kernel/trace/ftrace.c, v6.17): with one
        ops, ftrace_ops_get_func(ops): ops->func itself, unguarded, unless the ops asks for
        FTRACE_OPS_FL_RECURSION, then ftrace_ops_assist_func; with more, __ftrace_ops_list_func.
        Both of those take one TRACE_LIST_START trylock around every callback they call, so a
        callback that recurses is called again once, then the whole call is dropped."""
        ip, parent_ip, op, fregs_addr = DISPATCH_ARGS(self._args)
        karch = self.karch
        truth = self.verify.take(ip)  # the patch-site instant (also a kprobe's there, on x86)
        site = self.by_ip.get(ip)
        if site is None:  # the trampoline was called, not reached from a patch site
            raise FtlabError(f"ftrace: ftrace_caller entered from {self.m.where(ip)}, which is not a patch site")
        enc = site.encoding
        karch.check_call_alignment(self.m, lambda: self._caller(site), "ftrace_ops_list_func")
        meaning = {member: f(ip, truth, self.m.u64) for member, f in enc.meaning.items()} if truth else None
        fregs = FtraceRegs(karch, self.m, fregs_addr, truth, meaning, self.saved_at(site))
        # op: one ops that a CALL_OPS literal called directly, else ftrace_ops_list, which holds the
        # newest ops first (add_ftrace_ops puts it at the head, kernel/trace/ftrace.c) and
        # __ftrace_ops_list_func walks from there
        one = self.ops_at.get(op)
        ops = (one,) if one is not None else tuple(reversed(self.ops))
        before = self._saved_regs(fregs) if self._returns is not None else {}
        try:
            self._call_ops(ops, ip, parent_ip, fregs)
        finally:
            if self._returns is not None:
                self._expect_return(self._caller(site), site, fregs, before, truth)

    def _saved_regs(self, fregs: FtraceRegs) -> dict[str, int]:
        """The registers a ftrace_regs holds, by their pt_regs names."""
        aliases = self.karch.ftrace_regs_aliases
        return {r: fregs.reg(r) for r in (aliases.get(m, m) for m in fregs.saved)}

    def _expect_return(
        self, caller: str, site: Site, fregs: FtraceRegs, before: dict[str, int], truth: dict | None
    ) -> None:
        """A user's trampoline must return after the site, or where a handler moved fregs->ip; with
        the registers as at the site (when verifying), but for those the site's call may clobber and
        those a handler changed in fregs, which it must restore as changed."""
        pc = self.karch.cpu.pc
        changed = {r: v for r, v in self._saved_regs(fregs).items() if v != before[r]}
        target = changed.pop(pc, site.ip + site.encoding.size)
        regs = {r: v for r, v in (truth or {}).items() if r not in site.encoding.clobbers and r != pc}
        what = "fregs->ip" if target != site.ip + site.encoding.size else "the instruction after the site"
        regs.update((r, v) for r, v in changed.items() if r in regs)
        self._returns.expect(caller, target, what, regs, site.encoding.clobbers)

    def _call_ops(self, ops, ip: int, parent_ip: int, fregs: FtraceRegs) -> None:
        if len(ops) == 1 and not ops[0].flags & OpsFlag.RECURSION:
            if ops[0].traces(ip):
                ops[0].func(ip, parent_ip, ops[0], fregs)
            return
        bit = self.recursion.trylock(ip, parent_ip, TraceRecursion.LIST_START)
        if bit < 0:
            return
        try:
            for op in ops:
                if op.traces(ip):
                    op.func(ip, parent_ip, op, fregs)
        finally:
            self.recursion.unlock(bit)
