"""Legacy -pg mcount sites (issue #12): the call after each function's prologue, found, patched and
traced as the kernel did before -mfentry (x86, gone in 5.2) and patchable entries (arm64).

The references are independent of the lab: the objects' relocations read with pyelftools, the
instructions decoded with capstone, the C source's call graph, the catalog's functions, and the
emulator's true registers at each site (verify mode)."""

import json
from collections import Counter

import pytest
from elftools.elf.elffile import ELFFile

from emulator.asm import disassemble
from emulator.machine import decode_return
from fixtures import catalog
from helpers import ARCHES, EXAMPLES
from tracers import FunctionTracer, Lab
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.core.fgraph import FgraphOps
from tracers.core.fprobe import Fprobe
from tracers.core.ftrace import FtraceOps
from tracers.core.kprobes import Kprobe
from tracers.core.kretprobe import Kretprobe
from tracers.core.stacktrace import stack_trace
from tracers.output.sinks import ListSink
from transcripts import run

MCOUNT = [
    pytest.param(a, n, id=f"{a}-{n}")
    for a in ARCHES
    for n in catalog.names(a)
    if catalog.variant(a, n).site_kind == "mcount"
]
# what each arch's -pg compiler calls, and where the call's relocation sits from the call's start
CALLED = {"x86_64": ("mcount", 1), "arm64": ("_mcount", 0)}
CALL_MNEMONIC = {"x86_64": "call", "arm64": "bl"}
MISSING_X86 = ["r15", "r14", "r13", "r12", "bx", "r11", "r10", "orig_ax", "cs", "flags", "ss"]


def relocated_sites(variant: catalog.Variant) -> dict[str, int]:
    """{function: offset of its mcount call} from the object's own relocations against the mcount
    symbol, each placed in the function that contains it (pyelftools, not the lab's loader)."""
    name, at = CALLED[variant.arch]
    with variant.path.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        funcs = [
            (s.name, s["st_value"], s["st_size"]) for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_FUNC"
        ]
        places = [
            r["r_offset"] - at
            for r in elf.get_section_by_name(".rela.text").iter_relocations()
            if symtab.get_symbol(r["r_info_sym"]).name == name
        ]
    found = {}
    for place in places:
        [(func, start)] = [(n, a) for n, a, size in funcs if a <= place < a + size]
        assert func not in found, f"two mcount calls in {func}"
        found[func] = place - start
    return found


@pytest.mark.parametrize("arch_name,variant", MCOUNT)
def test_every_function_has_its_mcount_call_as_site(arch_name, variant):
    """One site per function, at the call the compiler placed after the prologue; compiled a call of
    mcount, a NOP after init and a call of the mcount trampoline when enabled (capstone)."""
    expected = relocated_sites(catalog.variant(arch_name, variant))
    assert sorted(expected) == sorted(catalog.FUNCTIONS)
    lab = Lab.open(variant, arch_name)
    m = lab.machine
    assert {s.func.name: s.ip - s.func.addr for s in lab.sites} == expected
    mcount = m.symbols.get(CALLED[arch_name][0]).addr
    caller = lab.ftrace.callers["mcount"].caller
    call = CALL_MNEMONIC[arch_name]
    for s in lab.sites:
        assert expected[s.func.name] > 0  # after the prologue, unlike fentry
        [(_, _, compiled)] = disassemble(m.arch, s.compiled, s.ip)
        [(_, _, init)] = disassemble(m.arch, s.disabled, s.ip)
        [(_, _, enabled)] = disassemble(m.arch, s.enabled, s.ip)
        assert compiled.split()[0] == call and int(compiled.split()[-1].lstrip("#"), 16) == mcount
        assert init.split()[0] == "nop"
        assert enabled.split()[0] == call and int(enabled.split()[-1].lstrip("#"), 16) == caller
        assert m.read(s.ip, len(s.disabled)) == s.disabled


def test_mcount_loc_lists_the_same_sites_as_the_relocations():
    """gcc -pg -mrecord-mcount's __mcount_loc points at each call (.text + offset addends)."""
    variant = catalog.variant("x86_64", "funcs-mcount")
    with variant.path.open("rb") as f:
        elf = ELFFile(f)
        addends = sorted(r["r_addend"] for r in elf.get_section_by_name(".rela__mcount_loc").iter_relocations())
    with variant.path.open("rb") as f:
        starts = {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}
    assert addends == sorted(starts[func] + off for func, off in relocated_sites(variant).items())


def test_arm64_gcc_clobbers_argument_one_and_clang_does_not():
    """In the prologue before the site gcc copies lr into x0 (argument 1), clang does not (capstone)."""
    for variant, clobbers in (("funcs-mcount", True), ("funcs-mcount-clang", False)):
        lab = Lab.open(variant, "arm64")
        m = lab.machine
        for s in lab.sites:
            prologue = [t for _, _, t in disassemble(m.arch, m.read(s.func.addr, s.ip - s.func.addr), s.func.addr)]
            assert ("mov x0, x30" in prologue) == clobbers, (variant, s.func.name, prologue)


def trace(lab, tracer, name, *args, ret="i64", **kw):
    sink = ListSink()
    with tracer(lab, sink, **kw):
        result = lab.call(name, *args, ret=ret)
    return result, sink.events


@pytest.mark.parametrize("arch_name,variant", MCOUNT)
@pytest.mark.parametrize("verify", [False, True], ids=["ring", "verified"])
def test_function_trace_names_the_true_callers(arch_name, variant, verify):
    """The parent is the caller, as the C source calls (the bug was `<-0x200fffb0`, a stack slot):
    chain_a calls chain_b and chain_c, chain_b calls chain_c; tail_a's tail call makes tail_b's parent
    tail_a's caller; every nested fib is called by fib."""
    lab = Lab.open(variant, arch_name)
    m = lab.machine
    name = lambda addr: m.symbols.lookup(addr)[0].name  # noqa: E731
    _, events = trace(lab, FunctionTracer, "chain_a", 10, verify=verify)
    assert [(name(e.ip), name(e.parent_ip)) for e in events] == [
        ("chain_a", "ftlab_caller"),
        ("chain_b", "chain_a"),
        ("chain_c", "chain_b"),
        ("chain_c", "chain_a"),
    ]
    _, events = trace(lab, FunctionTracer, "tail_a", 4, verify=verify)
    assert [(name(e.ip), name(e.parent_ip)) for e in events] == [("tail_a", "ftlab_caller"), ("tail_b", "ftlab_caller")]
    result, events = trace(lab, FunctionTracer, "fib", 8, verify=verify)
    assert result == 21 and len(events) == 2 * 34 - 1  # fib(n) makes 2 * fib(n + 1) - 1 calls
    assert events[0].parent_ip == m.exit_addr and all(name(e.parent_ip) == "fib" for e in events[1:])
    assert not verify or all(e.mismatch == [] for e in events)


@pytest.mark.parametrize("arch_name,variant", MCOUNT)
@pytest.mark.parametrize("verify", [False, True], ids=["ring", "verified"])
def test_function_graph_hooks_the_real_return_slot(arch_name, variant, verify):
    """Entries and exits balance at the right depths, each exit returns where its entry was called
    from with the catalog's result, and the traced results are the untraced ones (the bug: 22
    entries and no exit)."""
    lab = Lab.open(variant, arch_name)
    m = lab.machine
    for ex in EXAMPLES:
        if not all(isinstance(a, int) for a in ex.args):
            continue
        result, events = trace(lab, FunctionGraphTracer, ex.name, *ex.args, ret=ex.func.ret, verify=verify)
        assert result == ex.expected, ex
        stack, names = [], Counter()
        for ev in events:
            if ev.type == "entry":
                assert ev.depth == len(stack)
                stack.append(ev)
                names[m.symbols.lookup(ev.ip)[0].name] += 1
            else:
                entry = stack.pop()
                assert (ev.ip, ev.depth, ev.parent_ip) == (entry.ip, entry.depth, entry.parent_ip)
        assert not stack and events
        if ex.calls:
            assert names == Counter(ex.calls)
        top = events[-1]  # the outermost exit: the return registers the caller gets
        assert top.type == "exit" and top.depth == 0 and top.ip == lab.ftrace.site(ex.name).ip
        assert decode_return(ex.func.ret, top.retval, top.regs[m.arch.ret_regs[1]]) == ex.expected
        assert not verify or all(ev.mismatch == [] for ev in events)
    assert lab.fgraph.curr_ret_stack == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_snapshot_meanings_at_an_mcount_site(arch):
    """Verified against the true registers at the site: x86's sp is the function's entry sp, the
    return address's slot above the pushed rbp (8(%rbp)), and bp its own frame; arm64's fp and lr
    are the frame record's and x0 (argument 1, gone to gcc's MOV X0, X30) is not captured."""
    lab = Lab.open("funcs-mcount", arch)
    m = lab.machine
    seen = []

    def at_site(ip, parent_ip, op, fregs):
        checks = {c.field: c for c in fregs.verify().checks}
        seen.append(parent_ip)
        assert fregs.verify().mismatch == [] and checks
        if arch == "x86_64":
            assert m.u64(fregs.get_stack_pointer()) == parent_ip  # the slot fgraph and rethook hook
            assert checks["sp"].by_meaning and checks["ip"].by_meaning and not checks["bp"].by_meaning
            assert fregs.fields["bp"] == fregs.get_stack_pointer() - 8  # push rbp; mov rbp, rsp
            assert "di" in fregs.fields and fregs.missing == MISSING_X86
        else:
            assert "x0" in fregs.missing and "x0" not in fregs.fields
            assert fregs.get_return_address() == parent_ip == m.u64(fregs.truth["x29"] + 8)  # the frame record
            assert checks["lr"].by_meaning and checks["fp"].by_meaning and not checks["sp"].by_meaning
            assert fregs.get_argument(0) == parent_ip  # what ftrace_regs_get_argument reads: gcc's copy of lr

    ops = FtraceOps(at_site, name="at_site")
    with lab.verify.holding(lab.ftrace):
        lab.ftrace.register(ops)
        assert lab.call("chain_a", 10) == 129
        lab.ftrace.unregister(ops)
    assert len(seen) == 4


@pytest.mark.parametrize("arch", ARCHES)
def test_kprobes_kretprobes_and_fprobes_on_an_mcount_function(arch):
    """A kprobe at the function's first instruction is a breakpoint (the site is further in); a
    kretprobe and an fprobe give the catalog's results; on x86 a kprobe on the mcount call itself
    goes through ftrace_regs_caller (KPROBES_ON_FTRACE), on arm64 it is refused as in the kernel."""
    lab = Lab.open("funcs-mcount", arch)
    arg_regs = lab.arch.arg_regs
    seen = []
    p = Kprobe("sum10", 0, lambda p, regs: seen.append([regs.regs_get_kernel_argument(n) for n in range(10)]) or 0)
    lab.kprobes.register(p)
    with lab.verify.holding(lab.kprobes):
        assert lab.call("sum10", *range(1, 11)) == 385
    lab.kprobes.unregister(p)
    # at the first instruction: every register argument; x86 reads the rest from the entry sp
    [args] = seen
    assert args[: len(arg_regs)] == list(range(1, len(arg_regs) + 1))
    assert arch != "x86_64" or args == list(range(1, 11))

    krp, rets = lab.kretprobes(), []
    rp = Kretprobe("chain_c", lambda ri, regs: rets.append(regs.regs_return_value()), via="ftrace")
    krp.register(rp)
    assert lab.call("chain_a", 10) == 129
    krp.unregister(rp)
    assert rets == [catalog.FUNCTIONS["chain_c"].reference(16), catalog.FUNCTIONS["chain_c"].reference(10)]

    fprobes, got = lab.fprobes("fgraph"), []
    fp = Fprobe(
        lambda fp, ip, ret_ip, regs, data: got.append(("entry", regs.get_argument(1), regs.get_argument(2))) or 0,
        lambda fp, ip, ret_ip, regs, data: got.append(("exit", regs.get_return_value() & 0xFFFFFFFF)),
    )
    fprobes.register(fp, "add3")
    assert lab.call("add3", 1, 2, 3) == 6
    fprobes.unregister(fp)
    assert got == [("entry", 2, 3), ("exit", 6)]

    site = lab.ftrace.site("add3")
    on_site = Kprobe("add3", site.ip - site.func.addr, lambda p, regs: seen.append(regs.instruction_pointer()) or 0)
    if lab.ftrace.callers["mcount"].regs_caller is None:
        with pytest.raises(Exception, match="needs KPROBES_ON_FTRACE"):
            lab.kprobes.register(on_site)
        return
    lab.kprobes.register(on_site)
    assert lab.call("add3", 1, 2, 3) == 6
    assert seen[-1] == site.ip + lab.karch.kprobes.TRAP_IP_OFFSET


def test_replay_marks_what_the_trace_marked(tmp_path):
    """The ring records copy every ftrace_regs member: a recording says which ones an mcount site
    does not capture (arm64's x0), so its replay prints what the trace printed."""
    rec = str(tmp_path / "t.rec")
    call = ["funcs-mcount", "--arch", "arm64", "chain_a(10)"]
    traced = run(["trace", "--tracer", "function_graph", "--format", "json", *call])
    assert run(["record", "--tracer", "function_graph", "-o", rec, *call])[2] == 0
    replayed = run(["replay", "--format", "json", rec])
    assert replayed == traced and traced[2] == 0
    entries = [json.loads(line) for line in traced[0].splitlines() if '"entry"' in line]
    assert len(entries) == 4 and all("x0" in e["regs"]["missing"] for e in entries)


@pytest.mark.parametrize("arch", ARCHES)
def test_unwinding_through_hooked_mcount_frames(arch):
    """The word fgraph recorded for each hooked frame (x86: the return slot rbp + 8, arm64: the
    caller's fp from the frame record) is the one an unwinder finds in the frame records, so
    ftrace_graph_ret_addr gives back the real return addresses."""
    lab = Lab.open("funcs-mcount", arch)
    fg, m, traces = lab.fgraph, lab.machine, []

    def ret(trace, gops, fregs):
        if trace.depth == 2:
            args = (m, lab.karch, fregs.get_instruction_pointer(), fregs.get_frame_pointer())
            traces.append([m.symbols.lookup(a)[0].name for a in stack_trace(*args, [fg.ret_addr])])

    fg.register(FgraphOps(lambda t, g, f: 1, ret))
    assert lab.call("chain_a", 10) == 129
    assert traces == [["chain_b", "chain_a", "ftlab_caller"]]
