"""fprobe's missed counting, ftrace's recursion protection and the rethook design's entry, held to
kernel/trace/fprobe.c, kernel/trace/ftrace.c and include/linux/trace_recursion.h (issue #10).

The fgraph design is checked on both arches; the rethook design (x86 only: arm64 never had it)
on x86_64."""

import struct
from collections import Counter

import pytest

from emulator import FtlabError
from fixtures import catalog
from tracers import Lab
from tracers.core.fgraph import FgraphOps
from tracers.core.fprobe import Fprobe
from tracers.core.ftrace import FtraceOps, OpsFlag
from tracers.kernel_version import MODELLED, KernelVersion

U64 = struct.Struct("<Q")
X86_ONLY = pytest.mark.parametrize("arch", ["x86_64"])  # the rethook design: x86 only
CAP = 10  # trace_selftest's callbacks stop recursing by themselves after this many calls
FIB_CALLS = 2 * 1597 - 1  # fib(16) calls fib 2 * fib(17) - 1 times

# -- fprobe_entry: no room on the shadow stack (kernel/trace/fprobe.c, v6.17) ------------------


@pytest.mark.parametrize("kernel", [KernelVersion(6, 18), MODELLED], ids=str)
def test_fgraph_reservation_failure_runs_no_entry_handler(arch, kernel):
    """fgraph_reserve_data fails deep in fib: every enabled fprobe on fib counts a miss, and no
    entry handler runs for that call (fprobe_entry returns 0 first); an entry-only one too until
    6.18. From 6.19 (2c67dc457bc6) the entry-only one is on fprobe_ftrace_ops, which
    fprobe_fgraph_entry skips: it misses nothing and its handler runs on every call."""
    lab = Lab.open(catalog.DEFAULT, arch, kernel=kernel)
    fprobes, entries, exits = lab.fprobes("fgraph"), Counter(), Counter()

    def entry(fp, ip, ret_ip, regs, data):
        entries[fp.id] += 1
        return 0

    def exit_(fp, ip, ret_ip, regs, data):
        exits[fp.id] += 1

    # 2 x (header + 13 words) = 224 bytes a frame: deep in fib the reservation fails while a frame
    # itself still fits (else fgraph counts trace_overrun and fprobe never sees the call)
    probes = [Fprobe(entry, exit_, entry_data_size=8 * 13) for _ in range(2)] + [Fprobe(entry)]
    for fp in probes:
        fprobes.register(fp, "fib")
    assert lab.call("fib", 16) == 987
    assert lab.fgraph.trace_overrun == 0
    missed, on_ftrace = probes[0].nmissed, kernel.has("fprobe_entry_only_ftrace")
    assert missed > 0 and [fp.nmissed for fp in probes] == [missed] * 2 + [0 if on_ftrace else missed]
    assert [entries[fp.id] for fp in probes] == [FIB_CALLS - missed] * 2 + [FIB_CALLS - (0 if on_ftrace else missed)]
    assert [exits[fp.id] for fp in probes[:2]] == [FIB_CALLS - missed] * 2


def test_fgraph_skipped_exit_leaves_no_gap(lab):
    """An entry handler that returns non-zero gives up its place: the next fprobe's header and data
    are packed where it would have been (fprobe_entry's `used`), so the exit walk reads headers only
    where headers were written, never the skipped fprobe's entry data."""
    fprobes, m, seen = lab.fprobes("fgraph"), lab.machine, []

    def entry(fp, ip, ret_ip, regs, data):
        # the skipping fprobe leaves in its data what would read as the other's header
        m.pack(U64, data, probes[1].id if fp is probes[0] else 0xDA7A)
        return int(fp is probes[0])

    def exit_(fp, ip, ret_ip, regs, data):
        seen.append((fp.id, m.unpack(U64, data)[0]))

    probes = [Fprobe(entry, exit_, entry_data_size=8 * 3), Fprobe(entry, exit_, entry_data_size=8)]
    for fp in probes:
        fprobes.register(fp, "chain_c")
    assert lab.call("chain_c", 5) == 16
    assert seen == [(probes[1].id, 0xDA7A)]


# -- recursion protection (include/linux/trace_recursion.h, kernel/trace/ftrace.c, v6.17) -------


def recursing(lab, calls, name, target="add3"):
    """trace_selftest_test_recursion_func: call the traced function again, up to CAP times."""

    def func(ip, parent_ip, op, fregs):
        calls[name] += 1
        if calls[name] <= CAP:
            lab.call(target, 1, 2, 3)

    return func


def test_assist_func_lets_one_nested_call_through(lab):
    """A lone ops with FTRACE_OPS_FL_RECURSION runs through ftrace_ops_assist_func: its callback is
    called again once (the transition bit), then the trylock refuses and records the function."""
    ft, calls = lab.ftrace, Counter()
    ops = FtraceOps(recursing(lab, calls, "rec"), OpsFlag.RECURSION, filter={ft.site("add3").ip})
    ft.register(ops)
    assert lab.call("add3", 4, 5, 6) == 15
    assert calls["rec"] == 2 and list(ft.recursion.recursed_functions) == [ft.site("add3").ip]
    assert ft.recursion.val == 0


def test_list_func_guards_every_ops(lab):
    """With two ops the list function calls both, under one trylock: an ops without the RECURSION
    flag recurses once more, not without limit, and the other ops is called as often."""
    ft, calls = lab.ftrace, Counter()
    add3 = {ft.site("add3").ip}
    ft.register(FtraceOps(recursing(lab, calls, "rec"), filter=add3))
    ft.register(FtraceOps(lambda *a: calls.update(["other"]), filter=add3))
    assert lab.call("add3", 4, 5, 6) == 15
    assert calls == {"rec": 2, "other": 2}


def test_lone_ops_without_recursion_flag_is_called_directly(lab):
    """ftrace_ops_get_func: a lone ops without the flag is its own guard; ftrace adds none."""
    ft, calls = lab.ftrace, Counter()
    ft.register(FtraceOps(recursing(lab, calls, "rec"), filter={ft.site("add3").ip}))
    assert lab.call("add3", 4, 5, 6) == 15
    assert calls["rec"] == CAP + 1 and not ft.recursion.recursed_functions


def test_fgraph_entry_lets_one_nested_call_through(lab):
    """function_graph_enter_regs takes ftrace_test_recursion_trylock(func, ret) itself (kernel/trace/
    fgraph.c since 6.14, "fgraph: Get ftrace recursion lock in function_graph_enter"; x86's
    ftrace_graph_func took it before): an entryfunc that calls its function again is called once
    more (the transition bit), the next entry is refused before any user sees it and recorded as
    CONFIG_FTRACE_RECORD_RECURSION does, and each entry that ran gets its return."""
    ft, calls = lab.ftrace, Counter()

    def entry(trace, gops, fregs):
        calls["entry"] += 1
        if calls["entry"] <= CAP:
            lab.call("add3", 1, 2, 3)
        return 1

    gops = FgraphOps(entry, lambda trace, gops, fregs: calls.update(["return"]))
    ft.set_filter(gops.ops, "add3")
    lab.fgraph.register(gops)
    assert lab.call("add3", 4, 5, 6) == 15
    assert calls == {"entry": 2, "return": 2}
    assert list(ft.recursion.recursed_functions) == [ft.site("add3").ip]
    assert ft.recursion.val == 0 and lab.fgraph.curr_ret_stack == 0


@X86_ONLY
def test_rethook_fprobe_counts_recursion_as_missed(lab):
    """fprobe_handler (6.4-6.13) takes ftrace_test_recursion_trylock itself: an entry handler that
    calls its function again runs twice, the third entry is refused and counted in nmissed, and
    each entry that ran gets its exit."""
    fprobes, calls, exits = lab.fprobes("rethook"), Counter(), Counter()

    def entry(fp, ip, ret_ip, regs, data):
        calls["entry"] += 1
        if calls["entry"] <= CAP:
            lab.call("add3", 1, 2, 3)
        return 0

    fp = Fprobe(entry, lambda *a: exits.update(["exit"]))
    fprobes.register(fp, "add3")
    assert lab.call("add3", 4, 5, 6) == 15
    assert (calls["entry"], exits["exit"], fp.nmissed) == (2, 2, 1)


# -- the rethook design's entry (fprobe_init: FTRACE_OPS_FL_SAVE_REGS, kernel/trace/fprobe.c) ----


@X86_ONLY
def test_rethook_fprobe_entry_gets_full_pt_regs(lab):
    """fprobe_init sets FTRACE_OPS_FL_SAVE_REGS: the site calls ftrace_regs_caller and the entry
    handler gets ftrace_get_regs(fregs), a pt_regs with every register, equal to the CPU's."""
    fprobes, seen = lab.fprobes("rethook"), []

    def entry(fp, ip, ret_ip, regs, data):
        seen.append((regs.kind, regs.missing, regs.regs_get_kernel_argument(0), regs.verify().mismatch))
        return 0

    fprobes.register(Fprobe(entry, lambda *a: None), "chain_c")
    assert lab.ftrace.site("chain_c").target == lab.ftrace.regs_caller
    with lab.verify.holding(lab.ftrace):
        assert lab.call("chain_c", 5) == 16
    # orig_ax only: the lab's ftrace_regs_caller has no direct calls (README, simplifications)
    assert seen == [("pt_regs", ["orig_ax"], 5, [])]


@pytest.mark.parametrize("arch", ["arm64"])
def test_rethook_fprobe_refused_without_regs_caller(lab):
    """register_ftrace_function refuses a SAVE_REGS ops where there is no ftrace_regs_caller, one
    reason arm64 never had the rethook-design fprobe; the registry refuses the design at once."""
    with pytest.raises(FtlabError, match=r"^ftrace_ops 'saver' asks for SAVE_REGS: arm64 has no ftrace_regs_caller"):
        lab.ftrace.register(FtraceOps(lambda *a: None, flags=OpsFlag.SAVE_REGS, name="saver"))
    with pytest.raises(FtlabError, match=r"^fprobe: no rethook design on arm64: arm64 never had rethook"):
        lab.fprobes("rethook")


# -- an entry-only fprobe on its own ftrace_ops (6.19+) ------------------------------------------


@pytest.mark.parametrize("kernel, on_ftrace", [(KernelVersion(6, 18), False), (MODELLED, True)], ids=str)
def test_an_entry_only_fprobe_stays_off_the_shadow_stack_from_6_19(arch, kernel, on_ftrace):
    """torvalds/linux 2c67dc457bc6 ("tracing: fprobe: optimization for entry only case", 6.19)
    registers an fprobe without exit_handler on fprobe_ftrace_ops, a plain ftrace_ops whose
    fprobe_ftrace_entry calls the entry handler with ret_ip = parent_ip and no entry_data; the
    x86-only FTRACE_OPS_FL_SAVE_REGS of that commit became FTRACE_OPS_FL_SAVE_ARGS for
    DYNAMIC_FTRACE_WITH_ARGS arches (arm64) in cd06078a38aa, the same release. Before, it ran on
    fprobe's fgraph_ops: fgraph pushed a shadow-stack frame for the call (kernel/trace/fgraph.c),
    though with no exit handler nothing hooks the return."""
    lab = Lab.open(catalog.DEFAULT, arch, kernel=kernel)
    fprobes, seen = lab.fprobes(), []

    def entry(fp, ip, ret_ip, fregs, data):
        seen.append((lab.fgraph.curr_ret_stack, fregs.get_argument(0), ret_ip, data))
        return 0

    fp = Fprobe(entry_handler=entry)
    fprobes.register(fp, "chain_c")
    assert (fprobes._gops in lab.fgraph.array) is not on_ftrace and (fprobes._fops in lab.ftrace.ops) is on_ftrace
    assert lab.call("chain_a", 10) == 129
    caller = lab.machine.symbols.get("chain_b")
    # the shadow stack's top (a word offset): 0 while nothing is pushed
    assert all((curr == 0) is on_ftrace for curr, *_ in seen)
    assert len(seen) == 2 and all(data is None for *_, data in seen)
    # chain_a(10) calls chain_b(10 ^ 5), which calls chain_c(16); ret_ip is parent_ip, in chain_b
    assert seen[0][1] == 16 and caller.addr <= seen[0][2] < caller.addr + caller.size
    fprobes.unregister(fp)
    assert fprobes._gops not in lab.fgraph.array and fprobes._fops not in lab.ftrace.ops
