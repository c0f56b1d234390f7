"""BPF trampolines, after kernel/bpf/trampoline.c (v6.17): fentry, fexit and fmod_ret programs on a
kernel function, one trampoline image per function, regenerated on every attach and detach
(bpf_trampoline_update) by the arch's arch_prepare_bpf_trampoline
(tracers/arch/<arch>/bpf_trampoline.py), and reached as a direct call through the ftrace core
(register_fentry: register_ftrace_direct on the function's patch site).

A program's body is a Python callable `run(ctx) -> r0` (the lab's BPF interpreter, or a test's
stand-in) behind a per-link guest stub, prog->bpf_func; everything else, the trampoline, the
recursion check and the run_ctx, is guest code, so its cost is counted as `compare` counts it.
With verify mode on, the ctx each program gets is checked against the true registers at the
function's patch site (and for fexit the true return register when the function returned).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from emulator import FtlabError, Machine
from emulator.layout import Layout

from ..arch.base import BPF_PROG, BPF_TRAMP_IMAGE, BPF_TRAMP_RUN_CTX, TrampFlag, TrampImage, TrampLink
from ..kernel_version import MODELLED, KernelVersion
from .ftrace import Ftrace, FtraceOps, Site
from .regs import Check, Verification

U64 = struct.Struct("<Q")
MASK64 = (1 << 64) - 1
KINDS = ("fentry", "fexit", "fmod_ret")  # enum bpf_tramp_prog_type: FENTRY, FEXIT, MODIFY_RETURN
BPF_MAX_TRAMP_LINKS = 38  # include/linux/bpf.h (x86_64): more is -E2BIG
NO_FLAGS = TrampFlag(0)
BPF_PROG_ARGS = Layout.of("bpf_prog_args", ("ctx",))  # a program stub's mailbox: the ctx it was called with
HELPERS = ("__bpf_prog_enter_recur", "__bpf_prog_exit_recur", "__bpf_tramp_enter", "__bpf_tramp_exit")


def trampoline_flags(kinds: set[str], wants_ip: bool) -> TrampFlag:
    """The flags bpf_trampoline_update gives arch_prepare_bpf_trampoline for links of these kinds:
    CALL_ORIG | SKIP_FRAME with any fexit or fmod_ret, else RESTORE_REGS; IP_ARG if a program
    calls bpf_get_func_ip."""
    if kinds & {"fexit", "fmod_ret"}:
        flags = TrampFlag.CALL_ORIG | TrampFlag.SKIP_FRAME
    else:
        flags = TrampFlag.RESTORE_REGS
    return flags | TrampFlag.IP_ARG if wants_ip else flags


@dataclass(eq=False)
class BpfLink:
    """struct bpf_tramp_link: one program attached to one function."""

    func: str
    kind: str
    run: Callable[[int], int]
    nr_args: int
    cookie: int
    wants_ip: bool  # prog->call_get_func_ip: the trampoline stores the ip at ctx[-2]
    name: str
    prog: int  # its struct bpf_prog in guest memory
    bpf_func: int  # the stub the trampoline calls
    m: Machine = field(repr=False)
    runs: int = 0
    # with verify mode on: per run, the ctx it received against the truth
    checks: list[Verification] = field(default_factory=list)

    @property
    def misses(self) -> int:
        """prog->stats->misses: runs __bpf_prog_enter_recur refused as recursive."""
        return self.m.u64(self.prog + BPF_PROG.offsets["misses"])


@dataclass(eq=False)
class Trampoline:
    """struct bpf_trampoline: the links on one function, its ftrace_ops and its current image."""

    site: Site
    nr_args: int
    ops: FtraceOps
    links: dict[str, list[BpfLink]] = field(default_factory=lambda: {k: [] for k in KINDS})
    image: int | None = None  # the current image's entry
    flags: TrampFlag = NO_FLAGS
    im: int = 0  # the current image's struct bpf_tramp_image
    generation: int = 0


class BpfTrampolines:
    SOURCE = "bpf_trampoline.S"

    def __init__(self, ftrace: Ftrace, kernel: KernelVersion = MODELLED):
        self.ftrace, self.m, self.karch, self.kernel = ftrace, ftrace.m, ftrace.karch, kernel
        self.arch = self.karch.direct_calls.trampoline
        syms = self.karch.load(self.m, self.SOURCE)
        self.calls = {name: syms[name] for name in HELPERS}
        self.current = self.m.alloc("lab data", 8, 8)  # current->bpf_ctx
        self.m.write_code(syms["current_bpf_ctx"], U64.pack(self.current))
        self.trampolines: dict[str, Trampoline] = {}
        self._links = 0
        self.verify = ftrace.verify
        self.verify.add(self, "bpf trampoline", lambda: [t.site.ip for t in self.trampolines.values() if t.image])
        self._truth: dict[int, dict[str, int] | None] = {}  # ctx address -> the registers at the site
        self._returned: dict[int, int] = {}  # ctx address -> the true return value

    # -- attach and detach (bpf_trampoline_link_prog / _unlink_prog) --------------------------------

    def attach(
        self,
        func: str,
        kind: str,
        run: Callable[[int], int],
        *,
        nr_args: int,
        cookie: int = 0,
        wants_ip: bool = False,
        name: str = "",
    ) -> BpfLink:
        """Attach a program to func's trampoline (bpf_tracing_prog_attach): nr_args is the
        function's btf_func_model. The newest link of a kind runs first (hlist_add_head)."""
        if kind not in KINDS:
            raise FtlabError(f"BPF trampoline: '{kind}' is not one of {', '.join(KINDS)}")
        site = self.ftrace.site(func)
        self._check_supported(kind, func, site)
        if not 0 <= nr_args <= self.arch.MAX_ARGS:
            raise FtlabError(f"{kind}/{func}: {nr_args} arguments: {self.arch.TOO_MANY_ARGS}")
        tr = self.trampolines.get(func)
        if tr is None:
            tr = Trampoline(site, nr_args, FtraceOps(lambda *a: None, name=f"bpf_trampoline {func}"))
        elif tr.nr_args != nr_args:
            raise FtlabError(f"{kind}/{func}: nr_args {nr_args}, but its trampoline's model has {tr.nr_args}")
        if sum(len(v) for v in tr.links.values()) >= BPF_MAX_TRAMP_LINKS:
            raise FtlabError(f"{kind}/{func}: {BPF_MAX_TRAMP_LINKS} programs are attached already (-E2BIG)")
        link = self._new_link(func, kind, run, nr_args, cookie & MASK64, wants_ip, name)
        tr.links[kind].insert(0, link)
        self.trampolines[func] = tr
        self._update(tr)
        return link

    def detach(self, link: BpfLink) -> None:
        tr = self.trampolines.get(link.func)
        if tr is None or link not in tr.links[link.kind]:
            raise FtlabError(f"{link.kind}/{link.func}: '{link.name}' is not attached")
        tr.links[link.kind].remove(link)
        self._update(tr)
        if tr.image is None:
            del self.trampolines[link.func]

    def _check_supported(self, kind: str, func: str, site: Site) -> None:
        direct = self.karch.direct_calls
        if direct.since is not None and not self.kernel.has(direct.since):
            raise FtlabError(f"{kind}/{func}: Linux {self.kernel}: {direct.unsupported}")
        reason = self.ftrace.direct_unsupported(site)
        if reason:
            raise FtlabError(f"{kind}/{func}: {reason}")

    def _new_link(self, func, kind, run, nr_args, cookie, wants_ip, name) -> BpfLink:
        """The program's struct bpf_prog and its bpf_func stub, whose hook runs it."""
        m = self.m
        self._links += 1
        stub = f"bpf_prog_{self._links}_{func}_{kind}"
        syms = m.load_lab_code(self.karch.source_dir / f"{stub}.S", text=self.arch.prog_stub(stub))
        prog = m.alloc("lab data", BPF_PROG.size, 64)
        m.write(prog, bytes(BPF_PROG.size))
        m.write(prog + BPF_PROG.offsets["bpf_func"], U64.pack(syms[stub]))
        link = BpfLink(func, kind, run, nr_args, cookie, wants_ip, name or stub, prog, syms[stub], m)
        box = m.mailbox(syms[stub], syms[f"{stub}_args"], BPF_PROG_ARGS)
        m.hook_call(lambda _addr: self._run(link, box[0]), syms[f"{stub}_lab"])
        return link

    # -- the image (bpf_trampoline_update) ----------------------------------------------------------

    def _update(self, tr: Trampoline) -> None:
        """A new image for the links there are now, and the site pointed at it (register_fentry,
        modify_fentry), or, with none left, the direct call unregistered (unregister_fentry)."""
        if not any(tr.links.values()):
            if tr.image is not None:
                self.ftrace.unregister(tr.ops)
                tr.image = None
            return
        tr.generation += 1
        name = f"bpf_trampoline_{tr.site.func.name}_{tr.generation}"
        im = self.m.alloc("lab data", BPF_TRAMP_IMAGE.size, 64)
        self.m.write(im, bytes(BPF_TRAMP_IMAGE.size))
        tr.im = im
        image = self.image_of(tr, name)
        syms = self.m.load_lab_code(self.karch.source_dir / f"{name}.S", text=self.arch.emit(image))
        self.m.hook_call(lambda _addr: self._entered(tr), syms[name])
        if f"{name}_after_call" in syms:
            self.m.hook_call(lambda _addr: self._returned_now(tr), syms[f"{name}_after_call"])
        tr.flags = image.flags
        old, tr.image = tr.image, syms[name]
        if old is None:
            self.ftrace.set_filter_ips(tr.ops, [tr.site.ip])
            self.ftrace.register_direct(tr.ops, tr.image)
        else:
            self.ftrace.modify_direct(tr.ops, tr.image)
        self.verify.refresh()

    def image_of(self, tr: Trampoline, name: str) -> TrampImage:
        """What arch_prepare_bpf_trampoline is given for the links there are now (trampoline_flags)."""
        links = {k: tuple(TrampLink(lk.prog, lk.cookie, lk.bpf_func) for lk in v) for k, v in tr.links.items()}
        kinds = {kind for kind, v in links.items() if v}
        flags = trampoline_flags(kinds, any(lk.wants_ip for v in tr.links.values() for lk in v))
        return TrampImage(
            name=name,
            func_addr=tr.site.func.addr,
            orig_call=tr.site.ip + tr.site.encoding.size,
            nr_args=tr.nr_args,
            flags=flags,
            fentry=links["fentry"],
            fmod_ret=links["fmod_ret"],
            fexit=links["fexit"],
            im=tr.im,
            calls=self.calls,
        )

    # -- what runs in the guest's hooks ---------------------------------------------------------------

    def _run(self, link: BpfLink, ctx: int) -> None:
        """prog->bpf_func(ctx): the program, its r0 into the return register."""
        link.runs += 1
        if self.verify.held(self):
            link.checks.append(self._check(link, ctx))
        r0 = link.run(ctx)
        self.m.set_reg(self.karch.cpu.ret_regs[0], r0 & MASK64)

    def _entered(self, tr: Trampoline) -> None:
        """The image's first instruction: the truth at the site, kept by the ctx address this call's
        frame will have (the dispatch of ftrace_caller may have taken it already, so peek)."""
        if self.verify.held(self):
            ctx = self.m.reg(self.karch.cpu.sp) + self.arch.ctx_from_entry_sp(tr.nr_args, tr.flags)
            self._truth[ctx] = self.verify.peek(tr.site.ip)

    def _returned_now(self, tr: Trampoline) -> None:
        """Back from the traced function (CALL_ORIG): its true return value."""
        if self.verify.held(self):
            ctx = self.m.reg(self.karch.cpu.sp) + self.arch.ctx_from_body_sp(tr.nr_args, tr.flags)
            self._returned[ctx] = self.m.reg(self.karch.cpu.ret_regs[0])

    def _check(self, link: BpfLink, ctx: int) -> Verification:
        """ctx[0..nr_args-1] against the argument registers at the site, ctx[-1] against nr_args,
        ctx[-2] against the function's address (IP_ARG), and for fexit ctx[nr_args] against the
        return register when the function returned."""
        n, cpu, tr = link.nr_args, self.karch.cpu, self.trampolines[link.func]
        words = struct.unpack(f"<{n + 3}Q", self.m.read(ctx - 16, 8 * (n + 3)))
        truth = self._truth.get(ctx)
        if truth is None:
            raise FtlabError(f"{link.kind}/{link.func}: ctx {ctx:#x} is not a trampoline frame's")
        checks = [Check(f"ctx[{i}]", words[2 + i], truth[cpu.arg_regs[i]]) for i in range(n)]
        checks.append(Check("ctx[-1]", words[1], n, by_meaning=True))
        if tr.flags & TrampFlag.IP_ARG:
            checks.append(Check("ctx[-2]", words[0], tr.site.func.addr, by_meaning=True))
        if link.kind == "fexit":
            checks.append(Check(f"ctx[{n}]", words[2 + n], self._returned[ctx]))
        return Verification(tuple(checks), cpu)

    # -- what users read ---------------------------------------------------------------------------------

    def run_ctx_cookie(self) -> int:
        """bpf_get_attach_cookie() in a tracing program: current->bpf_ctx's bpf_cookie, the
        bpf_tramp_run_ctx of the program running now."""
        run_ctx = self.m.u64(self.current)
        if run_ctx == 0:
            raise FtlabError("bpf_get_attach_cookie: no BPF trampoline program is running")
        return self.m.u64(run_ctx + BPF_TRAMP_RUN_CTX.offsets["bpf_cookie"])

    def links(self, func: str) -> list[BpfLink]:
        """func's links, in the order its trampoline runs them: fentry, fmod_ret, then fexit."""
        tr = self.trampolines.get(func)
        return [lk for kind in ("fentry", "fmod_ret", "fexit") for lk in tr.links[kind]] if tr else []
