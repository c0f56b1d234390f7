"""BPF programs on a lab's functions, and the trace their bpf_printk calls write.

The kernel prints bpf_trace_printk() into the trace buffer as `bpf_trace_printk: TEXT` lines of
whatever tracer is current; with none, that is the nop tracer's trace, which this one writes.
Each BPF object is loaded (maps in guest memory), each program checked as the verifier would
(verifier.check), its bpf_get_func_* calls inlined for tracing programs (fixups), and attached by
its section (tracers.bpf.routes). The trace ends with every program's runs and misses, and the
verify tally: with verify mode, the pt_regs each kprobe-route program is handed is compared with
the true registers, field by field.
"""

from __future__ import annotations

from pathlib import Path

from emulator import FtlabError

from ..bpf.dump import dump_text, formatted
from ..bpf.fixups import INLINED, inline_tracing_helpers
from ..bpf.helpers import BpfHelpers, BpfRun
from ..bpf.interpreter import Interpreter
from ..bpf.maps import RingBufMap
from ..bpf.object import open_object
from ..bpf.routes import KPROBE_KINDS, BpfLinks, ProgRun, tracing_nr_args
from ..bpf.verifier import CtxRules, check
from ..core.bpf_trampoline import BpfTrampolines
from ..core.stacktrace import stack_trace
from ..output.events import Event
from .tracer import Tracer

MAX_BPF_STACK, MAX_CALL_FRAMES = 512, 8


def _program_choice(spec: str) -> tuple[Path, list[str]]:
    """`PATH` or `PATH:PROG[,PROG...]` (a suffix naming programs has no '/')."""
    path, sep, names = spec.rpartition(":")
    if not sep or "/" in names or not path:
        return Path(spec), []
    return Path(path), [n for n in names.split(",") if n]


class BpfMaps:
    """Every loaded object's maps, found by address as the helpers are handed them."""

    def __init__(self, loaded):
        self.loaded = loaded

    def map_at(self, addr: int):
        return next((m for obj in self.loaded if (m := obj.map_at(addr)) is not None), None)

    def ringbuf_of(self, sample: int):
        """The ring buffer a reserved record is in (bpf_ringbuf_submit's `data` argument)."""
        for obj in self.loaded:
            for m in obj.maps.values():
                if isinstance(m, RingBufMap) and m.data <= sample <= m.data + m.mask:
                    return m
        raise FtlabError(f"bpf_ringbuf_submit: {sample:#x} is no ring buffer's record")


class BpfTracer(Tracer):
    name = "nop"

    def __init__(
        self,
        lab,
        sink,
        objects: list[str],
        clock: str = "counter",
        verify: bool = False,
        cookies: dict[str, int] | None = None,
    ):
        """objects: BPF object paths, each with `:PROG[,PROG...]` to attach only those programs.
        cookies: the attach cookie of a program, by name (libbpf's bpf_*_opts.cookie; 0 else)."""
        super().__init__(lab, sink, clock, verify)
        self.cookies = dict(cookies or {})
        m = lab.machine
        chosen = [_program_choice(spec) for spec in objects]
        self.loaded = [open_object(path).load(m) for path, _ in chosen]
        self.maps = BpfMaps(self.loaded)
        self.helpers = BpfHelpers(m, lab.karch, self.maps, clock=self._now, printk=self._printk, unwind=self._unwind)
        stack = m.alloc("bpf", MAX_BPF_STACK * MAX_CALL_FRAMES, 16) + MAX_BPF_STACK * MAX_CALL_FRAMES
        self.interpreters = {
            "kprobe": Interpreter(m, stack, self.helpers.kprobe, self.helpers.kfuncs),
            "tracing": Interpreter(m, stack, self.helpers.tracing, {}),
        }
        for (path, names), obj in zip(chosen, self.loaded, strict=True):
            unknown = [n for n in names if n not in {p.spec.name for p in obj.programs}]
            if unknown:
                listed = ", ".join(p.spec.name for p in obj.programs)
                raise FtlabError(f"{path}: no program {', '.join(unknown)} (it has {listed})")
        named = {p.spec.name for obj in self.loaded for p in obj.programs}
        if unknown := sorted(set(self.cookies) - named):
            raise FtlabError(f"--cookie {unknown[0]}: no such program (there are {', '.join(sorted(named))})")
        self.programs = [
            (prog, self._prepare(prog, obj))
            for (_, names), obj in zip(chosen, self.loaded, strict=True)
            for prog in obj.programs
            if not names or prog.spec.name in names
        ]
        # what each run needs, found by the program's identity once per run (no search, and no
        # dataclass comparison of instruction lists): (instructions, interpreter, name for errors)
        self._ready = {
            id(prog): (insns, self.interpreters[self._family(prog)], name) for prog, (insns, name) in self.programs
        }
        self.trampolines = BpfTrampolines(lab.ftrace, lab.kernel)
        self.links = BpfLinks(lab, self._run_program, self._on_run, self.trampolines)
        self.runs: list[ProgRun] = []
        self.differing: dict[str, int] = {}  # verify mode: field -> runs whose ctx had it wrong

    def _now(self) -> int:
        """bpf_ktime_get_ns: the trace clock (set when the trace starts)."""
        return self.clock.now()

    def _family(self, prog) -> str:
        return "kprobe" if prog.spec.kind in KPROBE_KINDS else "tracing"

    def _prepare(self, prog, obj) -> tuple[list, str]:
        """The instructions the program runs, and its name for errors (object and section):
        checked as the verifier would, then (tracing) with bpf_get_func_* inlined. A tracing
        program's ctx is the u64 array of its function's arguments, and for fexit and fmod_ret the
        return value after them (btf_ctx_access)."""
        spec, lab = prog.spec, self.lab
        if self._family(prog) == "kprobe":
            ctx = CtxRules(lab.karch.pt_regs.size, False)
            helpers = self.helpers.kprobe
        else:
            ctx = CtxRules(8 * (tracing_nr_args(lab, spec) + (spec.kind != "fentry")), False, align=8)
            helpers = {**self.helpers.tracing, **dict.fromkeys(INLINED)}
        name = f"{obj.obj.where}: {spec.section}"
        check(prog.insns, name=name, helpers=helpers, kfuncs=self.helpers.kfuncs, ctx=ctx)
        if self._family(prog) == "kprobe":
            return prog.insns, name
        mask = lab.kernel.has("bpf_nr_args_low_byte")
        return inline_tracing_helpers(prog.insns, spec.kind, mask_nr_args=mask, name=name), name

    def _run_program(self, prog, ctx: int, env: BpfRun) -> tuple[int, int]:
        insns, interp, name = self._ready[id(prog)]
        r0 = interp.run(insns, ctx, env, name=name)
        return r0, interp.executed

    def _on_run(self, run: ProgRun) -> None:
        self.runs.append(run)
        if run.verification is not None:
            self.snapshots += 1
            self.mismatching += bool(run.verification.mismatch)
            for f in run.verification.mismatch:
                self.differing[f] = self.differing.get(f, 0) + 1

    def _printk(self, run: BpfRun, text: str) -> None:
        m = self.lab.machine
        ip = m.reg(m.arch.pc)
        self.emit(
            Event(
                "nop",
                "print",
                ip,
                None,
                0,
                self.clock.now(),
                None,
                "",
                {},
                (),
                irqs_off=m.irqs_disabled(),
                text=f"bpf_trace_printk: {text.rstrip(chr(10))}",
            )
        )

    def _unwind(self, regs) -> list[int]:
        """perf_callchain_kernel(regs), where !user_mode(regs): the kernel stack from regs' pc and
        frame pointer, past the return hooks in place."""
        lab = self.lab
        if regs is None or lab.arch.user_mode(regs.member):
            return []
        recover = [lab.fgraph.ret_addr, lab.rethook.find_ret_addr]
        return stack_trace(lab.machine, lab.karch, regs.instruction_pointer(), regs.frame_pointer(), recover)

    def start(self) -> None:
        if self.verify:
            self.lab.verify.acquire(*self._verified())
        for prog, _ in self.programs:
            self.links.attach(prog, self.cookies.get(prog.spec.name, 0))

    def stop(self) -> None:
        self.links.detach_all()
        if self.verify:
            self.lab.verify.release(*self._verified())

    def _verified(self) -> tuple:
        """The cores at whose instant each route's ctx stands: a kprobe's point (or, on x86, the
        ftrace site a probe on a function's entry uses), the rethook trampoline, the ftrace site,
        the fprobe design's return hook, and for the trampoline the site that calls it."""
        lab = self.lab
        fprobe_exit = lab.fgraph if lab.kernel.has("fprobe_on_fgraph") else lab.rethook
        by_kind = {
            "kprobe": (lab.kprobes, lab.ftrace),
            "kretprobe": (lab.rethook,),
            "kprobe.multi": (lab.ftrace,),
            "kretprobe.multi": (fprobe_exit,),
            "kprobe.session": (lab.ftrace, fprobe_exit),
        }
        tracing = (lab.ftrace, self.trampolines)
        cores = (core for prog, _ in self.programs for core in by_kind.get(prog.spec.kind, tracing))
        return tuple(dict.fromkeys(cores))

    def summary(self) -> dict:
        """The counters, each program's runs (hits) and recursion misses, the verify tally, and
        every map as bpftool's JSON dump decodes it, with ring buffers' records in hex."""
        out = super().summary()
        if self.verify:
            out["verify"]["differing"] = dict(sorted(self.differing.items()))
        probes: dict[str, dict[str, int]] = {}
        for link in self.links.links:  # programs sharing a section are totalled, as events' probes are
            counts = probes.setdefault(link.prog.spec.section, {"hits": 0, "nmissed": 0})
            counts["hits"] += link.runs
            counts["nmissed"] += link.misses
        out["probes"] = probes
        out["maps"] = {
            m.name: [r.hex() for r in m.records()] if isinstance(m, RingBufMap) else formatted(m)
            for obj in self.loaded
            for m in obj.maps.values()
        }
        return out

    def map_dumps(self) -> list[tuple[str, str]]:
        """Each map's `bpftool map dump` text; a ring buffer's committed records, one hex line each."""
        out = []
        for obj in self.loaded:
            for m in obj.maps.values():
                if isinstance(m, RingBufMap):
                    text = "".join(f"{r.hex(' ')}\n" for r in m.records()) or "(no records)\n"
                    out.append((f"{m.name} (ringbuf, {len(m.records())} records)", text))
                else:
                    out.append((f"{m.name} ({m.spec.type_name})", dump_text(m)))
        return out
