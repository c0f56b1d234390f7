"""The ftrace ops list in guest code (ops_list.S): with several ops on the sites, each with guest
code, ftrace_call calls a guest ftrace_ops_list_func that finds the site's ops in a table and calls
each, newest first, with its own struct ftrace_ops as op. What it records must be what the Python
list dispatch records, byte for byte, with no Python per traced call."""

import pytest

from emulator import FtlabError
from fixtures import catalog
from helpers import EXAMPLES, example
from tracers import FtraceOps, FunctionTracer, Lab
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.core.fgraph import FgraphOps
from tracers.core.ftrace import FTRACE_OPS, OPS_PAIR, Ftrace
from tracers.core.ip_table import IP_SLOT, IP_TABLE, hash_64
from tracers.output.sinks import ListSink

FIB = [example("fib", 7)]
CHAINS = [example("fib", 5), example("chain_a", 3), example("chain_a", 1)]
# the two tracers' set_ftrace_filter: sites only one traces, sites both trace
RING_RECORDS = 70_000  # more than every example's records, for test_a_collision_chain...
SPLIT = {"function": ["fib", "chain_a", "chain_b"], "graph": ["fib", "chain_b", "chain_c"]}


@pytest.fixture
def dispatched(monkeypatch) -> list:
    """The Python dispatch's calls, in labs opened after this (the lab hooks the method it finds)."""
    calls: list = []
    python_dispatch = Ftrace._dispatch

    def counted(self, addr):
        calls.append(addr)
        return python_dispatch(self, addr)

    monkeypatch.setattr(Ftrace, "_dispatch", counted)
    return calls


def trace(arch, calls, python: bool, filters=None, between=None, variant=catalog.DEFAULT):
    """The ring buffer's records of the function tracer and function_graph together over calls, and
    how many times the guest list ran. python: a Python-only ops that traces nothing shares ftrace,
    which makes ftrace_call the Python list dispatch. between(lab, function, graph): after attaching.
    The buffer never wraps: a record's unused words are then 0 on both paths (the guest writes only
    its record's own, Python the whole slot)."""
    lab = Lab.open(variant, arch, ring_records=RING_RECORDS)
    if python:
        lab.ftrace.register(FtraceOps(lambda *a: None, name="python", notrace={s.ip for s in lab.ftrace.sites}))
    chunks: list[bytes] = []
    filters = filters or {}
    function = FunctionTracer(lab, ListSink(), filters=filters.get("function", ()), consumer=chunks.append)
    graph = FunctionGraphTracer(lab, ListSink(), filters=filters.get("graph", ()), consumer=chunks.append)
    entered: list[int] = []
    with function, graph:
        if between:
            between(lab, function, graph)
        if not python:
            lab.machine.hook_code(entered.append, lab.ftrace._guest_list)
        for ex in calls:
            assert ex.call(lab) == ex.expected, ex
    return lab, b"".join(chunks), len(entered)


def call_sites(lab) -> set[int]:
    return set(lab.ftrace._call_sites.values())


def records(lab, chunk: bytes) -> int:
    return len(chunk) // lab.ring_buffer.rec.size


@pytest.mark.parametrize("calls, filters", [(FIB, None), (CHAINS, SPLIT)], ids=["fib", "split-filters"])
def test_function_and_graph_together_record_what_the_python_list_records(arch, dispatched, calls, filters):
    lab, guest, entered = trace(arch, calls, False, filters)
    assert dispatched == []  # no Python per traced call
    _, python, _ = trace(arch, calls, True, filters)
    assert len(dispatched) == entered > 0  # the guest list ran at every site hit, as Python did
    assert guest == python
    if filters is None:  # each call: graph_ops' entry and exit, the function tracer's entry
        assert entered == catalog.FUNCTIONS["fib"].calls(7)["fib"] and records(lab, guest) == 3 * entered


def test_each_ops_gets_its_own_op_newest_first(arch):
    """At a site both trace, the table lists graph_ops (registered last) first, then the function
    tracer's ops, each with its own struct ftrace_ops, whose func is its guest code on arm64."""

    def check(lab, function, graph):
        ft = lab.ftrace
        assert call_sites(lab) == {ft._guest_list}
        fib = ft.site("fib").ip
        assert read_table(lab)[fib] == [
            (ft.ops[1].guest_func, ft.ops[1].addr),
            (function.ops.guest_func, function.ops.addr),
        ]
        assert ft.ops[1] is lab.fgraph.graph_ops
        for site in ft.sites:
            if site.literal is not None:  # arm64 CALL_OPS: several ops, or one asking for RECURSION
                assert lab.machine.u64(site.literal) == ft.list_ops
                assert lab.machine.u64(ft.list_ops + FTRACE_OPS.offsets["func"]) == ft._guest_list

    trace(arch, FIB, False, between=check)


def read_table(lab) -> dict[int, list[tuple[int, int]]]:
    """The guest table as ip -> its (func, op) pairs, read from guest memory."""
    m = lab.machine
    header = IP_TABLE.codec.unpack(m.read(lab.ftrace._table.addr, IP_TABLE.size))
    slots, mask = (header[IP_TABLE.index(n)] for n in ("slots", "mask"))
    out = {}
    for i in range(mask + 1):
        slot = IP_SLOT.codec.unpack(m.read(slots + i * IP_SLOT.size, IP_SLOT.size))
        ip, at = slot[IP_SLOT.index("ip")], slot[IP_SLOT.index("value")]
        if ip:
            pairs = []
            while pair := OPS_PAIR.codec.unpack(m.read(at, OPS_PAIR.size)):
                if not pair[OPS_PAIR.index("func")]:
                    break
                pairs.append((pair[OPS_PAIR.index("func")], pair[OPS_PAIR.index("op")]))
                at += OPS_PAIR.size
            out[ip] = pairs
    return out


def test_one_ops_left_is_called_directly_and_a_python_ops_falls_back(arch):
    lab = Lab.open(catalog.DEFAULT, arch)
    ft, code = lab.ftrace, lab.tracer_code
    function = FunctionTracer(lab, ListSink())
    graph = FunctionGraphTracer(lab, ListSink())
    with function:
        assert call_sites(lab) == {code.function_trace_call}
        with graph:
            assert call_sites(lab) == {ft._guest_list}
            python = FtraceOps(lambda *a: None, name="python")
            ft.register(python)
            assert call_sites(lab) == {ft.list_func}
            ft.unregister(python)
            assert call_sites(lab) == {ft._guest_list}
            with lab.verify.holding(ft):  # the Python dispatch takes the truth at each site
                assert call_sites(lab) == {ft.list_func}
            assert call_sites(lab) == {ft._guest_list}
        assert call_sites(lab) == {code.function_trace_call}
        if ft.nop_ops is not None:  # the function tracer asks for RECURSION: its sites call ftrace_list_ops
            assert lab.machine.u64(ft.list_ops + FTRACE_OPS.offsets["func"]) == code.function_trace_call
    assert call_sites(lab) == {ft.list_func}


def test_graph_ops_put_back_in_its_place_keeps_the_order(arch, dispatched):
    """fgraph registers graph_ops again at its old place when its users change (here a second user
    comes and goes while the function tracer, registered after graph_ops, stays): the table follows,
    the function tracer's ops first, as the Python dispatch walks them."""

    def second_user(lab, function, graph):
        other = FgraphOps(lambda *a: 0, name="other")
        lab.fgraph.register(other)
        lab.fgraph.unregister(other)
        fib = lab.ftrace.site("fib").ip
        assert [op for _, op in read_table(lab)[fib]] == [function.ops.addr, lab.fgraph.graph_ops.addr]

    def graph_first(arch, python):
        lab = Lab.open(catalog.DEFAULT, arch)
        if python:
            lab.ftrace.register(FtraceOps(lambda *a: None, name="python", notrace={s.ip for s in lab.ftrace.sites}))
        chunks: list[bytes] = []
        graph = FunctionGraphTracer(lab, ListSink(), consumer=chunks.append)
        function = FunctionTracer(lab, ListSink(), consumer=chunks.append)
        with graph, function:
            if not python:
                second_user(lab, function, graph)
            lab.call("fib", 6)
        return b"".join(chunks)

    guest = graph_first(arch, False)
    assert dispatched == []
    assert guest == graph_first(arch, True)


def test_a_collision_chain_still_finds_each_site(arch, dispatched):
    """Every site in the table, some past their home slot (linear probing), and every example's
    records the Python dispatch's."""
    chained = []

    def check(lab, function, graph):
        table = read_table(lab)
        header = IP_TABLE.codec.unpack(lab.machine.read(lab.ftrace._table.addr, IP_TABLE.size))
        bits = 64 - header[IP_TABLE.index("shift")]
        assert set(table) == {s.ip for s in lab.ftrace.sites if s.on}
        slots = header[IP_TABLE.index("slots")]
        for i in range(1 << bits):
            ip = lab.machine.u64(slots + i * IP_SLOT.size + IP_SLOT.offsets["ip"])
            if ip and hash_64(ip, bits) != i:
                chained.append(ip)

    _, guest, entered = trace(arch, EXAMPLES, False, between=check)
    assert chained and dispatched == [] and entered
    _, python, _ = trace(arch, EXAMPLES, True)
    assert guest == python


def test_a_site_missing_from_the_table_stops_with_an_error(arch):
    lab = Lab.open(catalog.DEFAULT, arch)
    with FunctionTracer(lab, ListSink()), FunctionGraphTracer(lab, ListSink()):
        header = lab.ftrace._table.addr
        table = lab.machine.u64(header + IP_TABLE.offsets["slots"])
        size = IP_SLOT.size * (lab.machine.u64(header + IP_TABLE.offsets["mask"]) + 1)
        lab.machine.write(table, bytes(size))  # every slot empty
        with pytest.raises(FtlabError, match=r"the guest ops list has no entry for .*fib.* \(an enabled patch site\)"):
            lab.call("fib", 3)


@pytest.mark.parametrize("variant", ["funcs-mcount", "funcs-mcount-clang"])
def test_mcount_sites_record_the_same_calls_on_both_dispatches(variant):
    """arm64's -pg sites capture no x0 (ftrace_caller_mcount stores the word anyway): the Python
    dispatch's writers copy the words the trampoline stored, as the guest code does, rather than
    look the member up among what was captured. The argument registers are not compared: that
    trampoline restores none of x0-x18, so each dispatch leaves its own values in the dead ones."""
    records = []
    for python in (False, True):
        lab, chunk, _ = trace("arm64", CHAINS, python, variant=variant)
        words = memoryview(chunk).cast("Q")
        n = lab.ring_buffer.rec.size // 8
        records.append([tuple(words[i : i + 4]) for i in range(0, len(words), n)])  # type, ts, ip, parent
    assert records[0] == records[1] and len(records[0]) > 20
