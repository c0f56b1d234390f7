"""BPF trampolines (fentry, fexit, fmod_ret) reached as ftrace direct calls, on both arches, with a
Python `run(ctx)` standing in for each BPF program: what each program's ctx holds, checked against
the call's own arguments, fixtures/catalog.py's reference results and the ELF's symbols, and in
verify mode against the emulator's true registers; results unchanged; recursion refused and
counted; detach restoring the text; a site shared with other ftrace_ops."""

from __future__ import annotations

import struct

import pytest

from emulator import FtlabError, asm
from fixtures import catalog
from tracers import Lab
from tracers.core.bpf_trampoline import BpfTrampolines
from tracers.core.ftrace import FtraceOps
from tracers.kernel_version import KernelVersion

# arm64 has direct calls only at CALL_OPS sites (-fpatchable-function-entry=4,2), as in the kernel
OBJECT = {"x86_64": "funcs", "arm64": "funcs-ops"}
FIB = catalog.FUNCTIONS["fib"]


class Prog:
    """A stand-in program: records the ctx words it sees (ctx[-2] .. ctx[nr_args]) and returns r0."""

    def __init__(self, lab: Lab, nr_args: int, r0=lambda words: 0, order: list | None = None, tag=""):
        self.m, self.nr_args, self.r0, self.order, self.tag = lab.machine, nr_args, r0, order, tag
        self.seen: list[dict[int, int]] = []

    def __call__(self, ctx: int) -> int:
        n = self.nr_args
        raw = struct.unpack(f"<{n + 3}Q", self.m.read(ctx - 16, 8 * (n + 3)))
        words = {i - 2: w for i, w in enumerate(raw)}
        self.seen.append(words)
        if self.order is not None:
            self.order.append(self.tag)
        return self.r0(words)


@pytest.fixture
def lab(arch):
    return Lab.open(OBJECT[arch], arch)


@pytest.fixture
def tramps(lab):
    return BpfTrampolines(lab.ftrace)


def u64(v: int) -> int:
    return v & (1 << 64) - 1


def test_fentry_sees_the_arguments_the_ip_and_nr_args(lab, tramps):
    prog = Prog(lab, 3)
    tramps.attach("add3", "fentry", prog, nr_args=3, wants_ip=True)
    assert lab.call("add3", 1, 2, 3) == catalog.FUNCTIONS["add3"].reference(1, 2, 3)
    [words] = prog.seen
    assert [words[0], words[1], words[2]] == [1, 2, 3]
    assert words[-1] == 3
    assert words[-2] == lab.machine.symbols.get("add3").addr  # the ELF symbol, bpf_get_func_ip


def test_fexit_sees_the_return_value_in_ctx_nr_args(lab, tramps):
    prog = Prog(lab, 1)
    tramps.attach("chain_c", "fexit", prog, nr_args=1)
    assert lab.call("chain_c", -7) == catalog.FUNCTIONS["chain_c"].reference(-7)
    [words] = prog.seen
    assert words[0] == u64(-7) and words[1] == u64(catalog.FUNCTIONS["chain_c"].reference(-7))


def test_fmod_ret_non_zero_skips_the_function_and_zero_runs_it(lab, tramps):
    inner = Prog(lab, 1)
    tramps.attach("chain_b", "fentry", inner, nr_args=1)
    tramps.attach("chain_a", "fmod_ret", Prog(lab, 1, r0=lambda w: 77 if w[0] == 10 else 0), nr_args=1)
    assert lab.call("chain_a", 10) == 77  # the result replaced, chain_a's body never ran
    assert inner.seen == []
    assert lab.call("chain_a", 11) == catalog.FUNCTIONS["chain_a"].reference(11)
    assert [w[0] for w in inner.seen] == [11 ^ 5]


def test_links_run_newest_first_fentry_then_fmod_ret_then_fexit(lab, tramps):
    order: list[str] = []
    for kind in ("fexit", "fentry", "fmod_ret"):
        for n in (1, 2):
            tramps.attach("chain_c", kind, Prog(lab, 1, order=order, tag=f"{kind}{n}"), nr_args=1)
    lab.call("chain_c", 3)
    # hlist_add_head: the newest link of a kind first
    assert order == ["fentry2", "fentry1", "fmod_ret2", "fmod_ret1", "fexit2", "fexit1"]
    assert [link.run.tag for link in tramps.links("chain_c")] == order


def test_each_program_runs_with_its_cookie_in_current_run_ctx(lab, tramps):
    """bpf_get_attach_cookie: current->bpf_ctx is the running program's bpf_tramp_run_ctx, set by
    __bpf_prog_enter_recur and put back by __bpf_prog_exit_recur."""
    seen = {}
    for kind, cookie in (("fentry", 0x1234), ("fexit", 1 << 63 | 7)):
        tramps.attach(
            "add3",
            kind,
            lambda ctx, k=kind: seen.setdefault(k, tramps.run_ctx_cookie()) and 0,
            nr_args=3,
            cookie=cookie,
        )
    lab.call("add3", 1, 2, 3)
    assert seen == {"fentry": 0x1234, "fexit": 1 << 63 | 7}
    with pytest.raises(FtlabError, match="no BPF trampoline program is running"):
        tramps.run_ctx_cookie()


def test_a_recursive_run_is_refused_and_counted_as_a_miss(lab, tramps):
    m = lab.machine
    results = []

    def run(ctx: int) -> int:
        results.append(m.call("add3", 4, 5, 6))  # the program calls the function it traces
        return 0

    link = tramps.attach("add3", "fentry", run, nr_args=3)
    assert lab.call("add3", 1, 2, 3) == 6
    assert results == [15] and link.runs == 1  # the nested entry ran add3 but not the program
    assert link.misses == 1


def test_detach_restores_the_text_byte_for_byte(lab, tramps):
    m = lab.machine
    addr, size = lab.obj.sections[".text"][0]
    before = m.read(addr, size)
    links = [tramps.attach("fib", kind, Prog(lab, 1), nr_args=1) for kind in ("fentry", "fexit", "fmod_ret")]
    site = lab.ftrace.site("fib")
    assert m.read(site.ip, site.encoding.size) != site.disabled[-site.encoding.size :]
    for link in links:
        tramps.detach(link)
    assert m.read(addr, size) == before
    assert lab.call("fib", 10) == FIB.reference(10)


@pytest.mark.parametrize("kinds", [("fentry",), ("fexit",), ("fentry", "fexit")])
def test_results_are_unchanged_and_every_call_seen(lab, tramps, kinds):
    progs = {kind: Prog(lab, 1) for kind in kinds}
    for kind, prog in progs.items():
        tramps.attach("fib", kind, prog, nr_args=1)
    n = 10
    assert lab.call("fib", n) == FIB.reference(n)
    calls = FIB.calls(n)["fib"]
    for kind, prog in progs.items():
        assert len(prog.seen) == calls
        if kind == "fexit":  # each recursive call's own return
            assert all(w[1] == FIB.reference(w[0]) for w in prog.seen)


@pytest.mark.parametrize("kinds", [("fentry",), ("fexit", "fmod_ret")])
def test_a_site_shared_with_another_ftrace_ops_gives_both(lab, tramps, kinds):
    """With another ops on the site it calls ftrace_regs_caller (x86: call_direct_funcs sets
    orig_ax) or the CALL_OPS ftrace_caller (arm64: fregs->direct_tramp), which then enters the
    trampoline as the site's own call would have."""
    hits = []
    ops = FtraceOps(lambda ip, parent, op, fregs: hits.append(fregs.get_argument(0)), name="other")
    lab.ftrace.set_filter(ops, "chain_c")
    progs = {kind: Prog(lab, 1) for kind in kinds}
    for kind, prog in progs.items():
        tramps.attach("chain_c", kind, prog, nr_args=1)
    site = lab.ftrace.site("chain_c")
    direct = tramps.trampolines["chain_c"].image
    assert site.target == direct
    lab.ftrace.register(ops)
    shared = lab.machine.symbols.get("ftrace_regs_caller" if lab.arch.name == "x86_64" else "ftrace_caller_ops")
    assert site.target == shared.addr
    for x in (10, -7):
        assert lab.call("chain_c", x) == catalog.FUNCTIONS["chain_c"].reference(x)
    assert hits == [10, u64(-7)]
    for kind, prog in progs.items():
        assert [w[0] for w in prog.seen] == [10, u64(-7)]
        if kind == "fexit":
            assert [w[1] for w in prog.seen] == [u64(catalog.FUNCTIONS["chain_c"].reference(x)) for x in (10, -7)]
    lab.ftrace.unregister(ops)
    assert site.target == direct


@pytest.mark.parametrize("shared", [False, True])
def test_every_ctx_equals_the_truth_in_verify_mode(lab, tramps, shared):
    links = [tramps.attach("fib", kind, Prog(lab, 1), nr_args=1, wants_ip=True) for kind in ("fentry", "fexit")]
    if shared:
        lab.ftrace.register(FtraceOps(lambda *a: None, name="other"))
    with lab.ftrace.verify.holding(tramps):
        assert lab.call("fib", 8) == FIB.reference(8)
    for link in links:
        assert len(link.checks) == link.runs == FIB.calls(8)["fib"]
        fields = {c.field for v in link.checks for c in v.checks}
        assert fields == {"ctx[0]", "ctx[-1]", "ctx[-2]", *(["ctx[1]"] if link.kind == "fexit" else [])}
        assert [v.mismatch for v in link.checks if v.mismatch] == []


def test_the_trampoline_path_costs_what_the_guest_runs(lab, tramps, capsys):
    """The lab-code count of one call through the trampoline equals the difference in all emulated
    instructions with and without it (two independent counts), once per program run (the
    stubs' mailbox blocks aside, which neither counts as the kernel's code)."""
    m = lab.machine
    costs = {}
    for kinds in (("fentry",), ("fentry", "fexit")):
        m.count_instructions(True)
        before = m.insns
        lab.call("chain_c", 3)
        bare = m.insns - before
        links = [tramps.attach("chain_c", kind, Prog(lab, 1), nr_args=1) for kind in kinds]
        m.count_lab_code(True)
        before = m.insns
        lab.call("chain_c", 3)
        m.count_lab_code(False)
        m.count_instructions(False)
        stubs = 3 * len(links)  # the mailbox stub's 3 instructions per run, left out of lab code
        assert m.insns - before - bare == m.lab_insns + stubs
        costs["+".join(kinds)] = m.lab_insns
        for link in links:
            tramps.detach(link)
    with capsys.disabled():
        print(f"\n{lab.arch.name} trampoline path per call (guest instructions): {costs}")
    assert 0 < costs["fentry"] < costs["fentry+fexit"]


def test_arm64_without_call_ops_sites_or_before_6_4_refuses(arch):
    if arch != "arm64":
        pytest.skip("x86_64 has direct calls at every site since 5.5")
    plain = Lab.open("funcs", arch)
    with pytest.raises(FtlabError, match=r"^fentry/fib: arm64 has ftrace direct calls .*CALL_OPS sites"):
        BpfTrampolines(plain.ftrace).attach("fib", "fentry", lambda c: 0, nr_args=1)
    old = Lab.open("funcs-ops", arch, kernel=KernelVersion(6, 3))
    with pytest.raises(FtlabError, match=r"^fentry/fib: Linux 6\.3: arm64 has ftrace direct calls"):
        BpfTrampolines(old.ftrace, KernelVersion(6, 3)).attach("fib", "fentry", lambda c: 0, nr_args=1)


def test_one_line_errors(lab, tramps):
    too_many = tramps.arch.MAX_ARGS + 1
    with pytest.raises(FtlabError, match=rf"^fentry/sum10: {too_many} arguments: .*register"):
        tramps.attach("sum10", "fentry", lambda c: 0, nr_args=too_many)
    with pytest.raises(FtlabError, match="not one of fentry, fexit, fmod_ret"):
        tramps.attach("fib", "fsession", lambda c: 0, nr_args=1)
    tramps.attach("fib", "fentry", lambda c: 0, nr_args=1)
    with pytest.raises(FtlabError, match="nr_args 2, but its trampoline's model has 1"):
        tramps.attach("fib", "fexit", lambda c: 0, nr_args=2)


@pytest.mark.parametrize(
    "kinds", [("fentry",), ("fexit",), ("fmod_ret",), ("fentry", "fmod_ret", "fexit"), ("fmod_ret", "fmod_ret")]
)
@pytest.mark.parametrize("wants_ip", [False, True])
def test_every_image_round_trips_through_capstone(lab, tramps, kinds, wants_ip):
    """Each emitted instruction is what capstone reads back from keystone's bytes (the check every
    lab .S file gets, tests/test_asm.py), for each kind of image bpf_trampoline_update builds."""
    for n, kind in enumerate(kinds):
        tramps.attach("add3", kind, Prog(lab, 3), nr_args=3, cookie=n << 40, wants_ip=wants_ip)
    tr = tramps.trampolines["add3"]
    image = lab.machine.symbols.lookup(tr.image)[0]
    text = tramps.arch.emit(tramps.image_of(tr, image.name))
    assembled = asm.assemble(lab.arch, text, tr.image, name=image.name)
    assert assembled.code == lab.machine.read(tr.image, len(assembled.code))
    assert asm.roundtrip(lab.arch, assembled) == []


def test_arm64_call_ops_literal_with_a_direct_call_branches_there_at_once(arch):
    """ftrace_caller_direct: a site whose trampoline is out of BL range calls ftrace_caller, which
    finds the sole direct ops in the CALL_OPS literal and `br x17`s to its direct_call before saving
    anything. The lab's trampolines are always in range, so the site is pointed there by hand."""
    if arch != "arm64":
        pytest.skip("CALL_OPS is arm64's")
    lab = Lab.open(OBJECT[arch], arch)
    tramps = BpfTrampolines(lab.ftrace)
    prog = Prog(lab, 1)
    tramps.attach("chain_c", "fexit", prog, nr_args=1)
    tr, site, m = tramps.trampolines["chain_c"], lab.ftrace.site("chain_c"), lab.machine
    assert m.u64(site.literal) == tr.ops.addr  # the sole ops, called without the list
    caller = m.symbols.get("ftrace_caller_ops").addr
    m.patch(site.ip, site.calling(tr.image), site.calling(caller))
    assert lab.call("chain_c", 5) == catalog.FUNCTIONS["chain_c"].reference(5)
    [words] = prog.seen
    assert [words[-1], words[0], words[1]] == [1, 5, catalog.FUNCTIONS["chain_c"].reference(5)]
