"""bpf_link: each loaded program attached through the route its section names, as the kernel
builds it (kernel/trace/bpf_trace.c, kernel/bpf/trampoline.c; v7.0):

* ``kprobe/SYM[+OFF]``: a kprobe; ctx = the exception's pt_regs. A program that moved the ip
  (bpf_override_return) makes the pre_handler return 1: no single-step (kprobe_perf_func).
* ``kretprobe/SYM``: a kretprobe; ctx = the pt_regs its return trampoline built.
* ``kprobe.multi/GLOB``, ``kretprobe.multi/GLOB``, ``kprobe.session/GLOB``: an fprobe
  (bpf_kprobe_multi_link_attach); ctx = ftrace_partial_regs() of its ftrace_regs, then, from 7.0,
  ftrace_partial_regs_update() copies the ip and return value back (kprobe_multi_link_prog_run).
  Before 6.14 (fprobe on rethook) the handlers got ftrace_regs_caller's pt_regs itself. A session
  program runs at entry and exit; a non-zero entry result skips the exit, and the two runs share an
  8-byte cookie in the fprobe's entry data.
* ``fentry/SYM``, ``fexit/SYM``, ``fmod_ret/SYM``: the BPF trampoline (tracers/core/bpf_trampoline),
  attached as a direct call through ftrace; ctx = the trampoline's u64 argument array.

Every run goes through `BpfLinks.run`, which counts bpf_prog_active's recursion misses, runs the
interpreter and reports the run (program, function, result, BPF instructions, and with verify mode
the ctx's captured fields against the true registers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from emulator import FtlabError

from ..core.fprobe import Fprobe, Fprobes
from ..core.kprobes import Kprobe
from ..core.kretprobe import Kretprobe, Kretprobes
from ..core.regs import FtraceRegs, Verification, ftrace_partial_regs
from .helpers import BpfRun
from .object import LoadedProgram

KPROBE_KINDS = ("kprobe", "kretprobe", "kprobe.multi", "kretprobe.multi", "kprobe.session")
TRACING_KINDS = ("fentry", "fexit", "fmod_ret")
SESSION_COOKIE = 8  # bytes of fprobe entry data a session program's cookie takes
BPF_FUNC_get_func_ip = 173


def tracing_nr_args(lab, spec) -> int:
    """The traced function's argument count, which the kernel reads from its BTF and the lab from
    its DWARF (or a bundled fixture's C text)."""
    sig = lab.calls.signatures.get(spec.target)
    if sig is None:
        raise FtlabError(
            f"{spec.section}: {spec.target}'s prototype is unknown (the kernel reads it from BTF, "
            "the lab from DWARF: build the object with -g)"
        )
    return len(sig.params)


@dataclass
class ProgRun:
    """One run of a program, as `ftlab bpf` reports it."""

    prog: str
    route: str
    func: str
    is_return: bool
    r0: int
    insns: int  # BPF instructions executed
    verification: Verification | None = None
    missing: tuple[str, ...] = ()  # the pt_regs fields the ctx does not capture


@dataclass(eq=False)
class Link:
    """struct bpf_link: a program, its route and the functions it is attached to."""

    prog: LoadedProgram
    kind: str
    funcs: list[str]
    cookie: int = 0
    runs: int = 0
    misses: int = 0  # bpf_prog_inc_misses_counter
    handle: Any = field(default=None, repr=False)  # the Kprobe, Kretprobe, Fprobe or trampoline link


class BpfLinks:
    """The links of one lab. `run_program(prog, ctx, env) -> (r0, BPF instructions)` runs a
    program (the interpreter); `on_run(ProgRun)` is told of every run."""

    def __init__(self, lab, run_program: Callable, on_run: Callable[[ProgRun], None], trampolines=None):
        self.lab, self.m = lab, lab.machine
        self.run_program, self.on_run = run_program, on_run
        self.trampolines = trampolines  # a BpfTrampolines, for the tracing kinds
        self.links: list[Link] = []
        self._active = 0  # bpf_prog_active, the lab's one CPU
        # bpf_kprobe_multi_pt_regs_ptr(): the per-CPU pt_regs ftrace_partial_regs() fills on arm64
        self.partial = self.m.alloc("bpf", lab.karch.pt_regs.size, 16)
        self._kretprobes: Kretprobes | None = None
        self._fprobes: Fprobes | None = None

    # -- attach -------------------------------------------------------------------------------

    def attach(self, prog, cookie: int = 0) -> Link:
        kind, target = prog.spec.kind, prog.spec.target
        attach = {
            "kprobe": self._kprobe,
            "kretprobe": self._kretprobe,
            "kprobe.multi": self._multi,
            "kretprobe.multi": self._multi,
            "kprobe.session": self._multi,
            "fentry": self._tracing,
            "fexit": self._tracing,
            "fmod_ret": self._tracing,
        }.get(kind)
        if attach is None:
            raise FtlabError(f"{prog.spec.section}: the lab attaches no '{kind}' programs")
        link = Link(prog, kind, [], cookie)
        attach(link, target)
        self.links.append(link)
        return link

    def detach_all(self) -> None:
        """Every link detached, newest first; `links` keeps them for their counts."""
        for link in reversed(self.links):
            if link.handle is not None:
                self._detach(link)
                link.handle = None

    def _detach(self, link: Link) -> None:
        if link.kind == "kprobe":
            self.lab.kprobes.unregister(link.handle)
        elif link.kind == "kretprobe" and self._kretprobes is not None:
            self._kretprobes.unregister(link.handle)
        elif link.kind in TRACING_KINDS:
            self.trampolines.detach(link.handle)
        elif self._fprobes is not None:
            self._fprobes.unregister(link.handle)

    def _function(self, link: Link, name: str):
        """The traced function's symbol (a patch site's: what the routes attach to)."""
        site = self.lab.ftrace.site(name)
        link.funcs.append(name)
        return site.func

    def _kprobe(self, link: Link, name: str) -> None:
        offset = link.prog.spec.offset
        func = self._function(link, name)
        # bpf_get_func_ip_kprobe: the function's address for a probe on its entry, else 0
        func_ip = func.addr if offset == 0 else 0

        def pre_handler(p, regs) -> int:
            orig = regs.instruction_pointer()
            self.run(link, regs.addr, BpfRun(link.prog.spec.name, "kprobe", regs, func_ip, link.cookie), name, regs)
            return int(regs.instruction_pointer() != orig)

        link.handle = Kprobe(name, offset, pre_handler)
        self.lab.kprobes.register(link.handle)

    def _kretprobe(self, link: Link, target: str) -> None:
        func = self._function(link, target)
        if self._kretprobes is None:
            self._kretprobes = self.lab.kretprobes()
        kretprobes = self._kretprobes

        def handler(ri, regs) -> None:
            run = BpfRun(link.prog.spec.name, "kretprobe", regs, func.addr, link.cookie, is_return=True)
            self.run(link, regs.addr, run, target, regs)

        link.handle = rp = Kretprobe(target, handler)
        kretprobes.register(rp)

    def _multi(self, link: Link, pattern: str) -> None:
        if link.kind == "kprobe.session" and not self.lab.kernel.has("kprobe_session"):
            raise FtlabError(
                f"{link.prog.spec.section}: kprobe.session programs came in 6.10, not Linux {self.lab.kernel}"
            )
        names = sorted({s.func.name for s in self.lab.ftrace.sites if fnmatchcase(s.func.name, pattern)})
        if not names:
            raise FtlabError(f"{link.prog.spec.section}: '{pattern}' matches no traceable function")
        link.funcs.extend(names)
        if self._fprobes is None:
            self._fprobes = self.lab.fprobes()
        fprobes = self._fprobes
        session = link.kind == "kprobe.session"
        fp = Fprobe(entry_data_size=SESSION_COOKIE if session else 0)
        if link.kind != "kretprobe.multi":
            fp.entry_handler = lambda f, ip, ret_ip, regs, data: self._multi_run(link, ip, regs, False, data)
        if link.kind != "kprobe.multi":
            fp.exit_handler = lambda f, ip, ret_ip, regs, data: self._multi_run(link, ip, regs, True, data)
        link.handle = fp
        fprobes.register_syms(fp, names)

    def _multi_run(self, link: Link, ip: int, fregs, is_return: bool, data: int | None) -> int:
        """kprobe_multi_link_handler / _exit_handler: kprobe_multi_link_prog_run on the partial
        pt_regs; the entry's result matters only to a session (non-zero: no exit run)."""
        site = self.lab.ftrace.by_ip[ip]
        lab = self.lab
        partial = isinstance(fregs, FtraceRegs)
        regs = ftrace_partial_regs(fregs, self.partial, lab.kernel) if partial else fregs
        run = BpfRun(link.prog.spec.name, link.kind, regs, site.func.addr, link.cookie, is_return, data or 0)
        err = self.run(link, regs.addr, run, site.func.name, regs)
        if partial and lab.kernel.has("ftrace_partial_regs_update") and regs.addr != fregs.addr:
            # instruction_pointer(regs), regs_return_value(regs): the words, captured or not
            arch = self.m.arch
            fregs.set_instruction_pointer(regs.member(arch.pc))
            fregs.set_return_value(regs.member(arch.ret_regs[0]))
        return err if link.kind == "kprobe.session" and not is_return else 0

    def _tracing(self, link: Link, target: str) -> None:
        if self.trampolines is None:
            raise FtlabError(f"{link.prog.spec.section}: no BPF trampoline in this lab")
        func = self._function(link, target)
        nr_args = tracing_nr_args(self.lab, link.prog.spec)
        wants_ip = any(i.code == 0x85 and i.src == 0 and i.imm == BPF_FUNC_get_func_ip for i in link.prog.spec.insns)

        def run_ctx(ctx: int) -> int:
            tramps = self.trampolines
            # bpf_get_attach_cookie reads current->bpf_ctx, which __bpf_prog_enter set in the guest
            run = BpfRun(link.prog.spec.name, link.kind, None, func.addr, tramps.run_ctx_cookie(), link.kind == "fexit")
            checks = link.handle.checks
            return self.run(link, ctx, run, target, None, checks[-1] if checks else None)

        link.handle = self.trampolines.attach(
            target,
            link.kind,
            run_ctx,
            nr_args=nr_args,
            cookie=link.cookie,
            wants_ip=wants_ip,
            name=link.prog.spec.name,
        )

    # -- a run --------------------------------------------------------------------------------

    def run(self, link: Link, ctx: int, env: BpfRun, func: str, regs, verification=None) -> int:
        """bpf_prog_run, guarded by bpf_prog_active as the kprobe routes are: a program that
        reenters (a helper calling a traced function) is counted as missed, not run. The ctx's
        comparison with the truth: the pt_regs' own, or the trampoline's (`verification`)."""
        if regs is not None:
            verification = regs.verify()  # what the program is handed, before it changes anything
        self._active += 1
        try:
            if self._active != 1:
                link.misses += 1
                return 1
            r0, insns = self.run_program(link.prog, ctx, env)
        finally:
            self._active -= 1
        link.runs += 1
        missing = tuple(regs.missing) if regs is not None else ()
        self.on_run(ProgRun(link.prog.spec.name, link.kind, func, env.is_return, r0, insns, verification, missing))
        return r0
