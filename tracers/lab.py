"""A machine with the tracing cores built and one object loaded, its patch sites initialised: what
the CLI, the tests and Python users start from.

    lab = Lab.open("funcs", "arm64")          # a bundled fixture, or a path to a .o/.ko
    lab.call("fib", 10)                       # 55
    Lab.open("state", "arm64").run_calls("adler_init(ctx=buf(8)); adler_final(ctx):x32")  # a sequence:
                                              # its results and named buffers (tracers.call_results)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emulator import FtlabError, Machine
from emulator import arch as arches
from emulator.arch import Arch
from emulator.elf import elf_arch
from emulator.machine import DEFAULT_BUDGET
from fixtures import bundled

from .arch import kernel_arch
from .builtin.guest import TracerCode
from .builtin.probe_code import ProbeCode
from .call_results import CallsOutcome, run_calls
from .call_syntax import CallSequence, parse_calls, printable
from .calls import CallCheck
from .core.fgraph import Fgraph
from .core.fprobe import Fprobes
from .core.fprobe_batch import FprobeBatch
from .core.fprobe_guest import FprobeCode
from .core.ftrace import Ftrace
from .core.kprobes import Kprobes
from .core.kretprobe import Kretprobes
from .core.rethook import RethookCore
from .core.rethook_guest import RethookCode
from .core.ring_buffer import DEFAULT_RECORDS, RingBuffer
from .kernel_version import MODELLED, KernelVersion
from .output.records import records_of


@dataclass(frozen=True)
class Target:
    """An object to load, and for which architecture."""

    path: Path
    arch: Arch


def resolve(obj: str, arch: str | None) -> list[Target]:
    """OBJ as the CLI takes it: a file (its ELF header names the arch; an assembly source .S is for
    `arch`) or a bundled fixture name.

    `arch` may be None for a file, a name, or 'all' (a bundled fixture on every arch, a file on
    its own)."""
    path = Path(obj)
    if path.suffix == ".S":  # assembly source: no header names its arch
        if arch in (None, "all"):
            raise FtlabError(f"{path} is assembly source: say which --arch it is written for (x86_64 or arm64)")
        return [Target(path, arches.get(arch))]
    if path.exists() or "/" in obj or path.suffix in (".o", ".ko"):
        actual = elf_arch(path)
        if arch not in (None, "all", actual.name) and arches.get(arch) is not actual:  # all: its own
            raise FtlabError(f"{path} is an {actual.name} object; --arch {arch} contradicts it")
        return [Target(path, actual)]
    if arch is None:
        raise FtlabError(f"'{obj}' is a bundled fixture: say which --arch (x86_64, arm64 or all)")
    names = list(arches.ARCHES) if arch == "all" else [arches.get(arch).name]
    try:
        return [Target(bundled(a, obj), arches.get(a)) for a in names]
    except LookupError as err:
        raise FtlabError(err.args[0]) from None


class Lab:
    def __init__(
        self,
        target: Target,
        stubs=(),
        budget: int = DEFAULT_BUDGET,
        init: bool = True,
        ring_records: int | None = None,
        kernel: KernelVersion = MODELLED,
        loads=(),
        trampolines: dict[str, Path] | None = None,
    ):
        """init=False leaves the patch sites as compiled (no ftrace_init_nop): for comparisons.
        ring_records sizes the guest ring buffer (in records). kernel is the release whose
        behaviour the lab shows (tracers.kernel_version). loads are objects loaded first, in
        order, as insmod loads a module's dependencies: their global symbols resolve the later
        objects' undefined ones, and their patch sites are initialised too. trampolines replace
        the lab's: {kernel name (ftrace_caller, return_to_handler, ...): the user's .S}, each
        replacing the whole lab .S defining that name (docs/trampolines.md).

        Every core, then the built-in tracers' guest code, is built here in one order before the
        object loads: the lab's code and data sit at the same addresses whatever is used later."""
        self.target, self.kernel = target, kernel
        self.machine = Machine(target.arch, budget)
        karch = kernel_arch(target.arch).replacing(trampolines, kernel) if trampolines else None
        self.ftrace = Ftrace(self.machine, karch, kernel)
        self.fgraph = Fgraph(self.ftrace, kernel)
        self.rethook = RethookCore(self.ftrace, kernel)
        self.kprobes = Kprobes(self.ftrace, self.rethook.break_hooks())
        karch = self.ftrace.karch
        records = DEFAULT_RECORDS if ring_records is None else ring_records
        self.ring_buffer = RingBuffer(self.machine, karch, records_of(karch, kernel).size, records)
        self.tracer_code = TracerCode(self.ftrace, self.fgraph, self.ring_buffer, kernel)
        self.fprobe_code = FprobeCode(self.ftrace, self.fgraph)
        self.probe_code = ProbeCode(self.ftrace, self.ring_buffer, kernel)
        self.fprobe_code.batch = FprobeBatch(self.ftrace, self.ring_buffer, kernel)
        self.rethook.code = RethookCode.load(self.rethook)
        self.loaded = [self.machine.load(Path(path), stubs) for path in loads]
        self.obj = self.machine.load(target.path, stubs)
        self.sites = [site for obj in (*self.loaded, self.obj) for site in self.ftrace.add_object(obj)] if init else []
        self.calls = CallCheck(self)

    @classmethod
    def open(cls, obj: str, arch: str | None = None, **kw) -> Lab:
        targets = resolve(obj, arch)
        if len(targets) != 1:
            raise FtlabError("Lab.open takes one architecture")
        return cls(targets[0], **kw)

    @property
    def arch(self):
        return self.machine.arch

    def no_sites(self) -> str:
        """Why ftrace has nothing to trace, when no loaded object has a patch site."""
        return f"built without {self.arch.site_flags}, the flags that make patch sites: nothing for ftrace to trace"

    @property
    def karch(self):
        return self.ftrace.karch

    @property
    def verify(self):
        """Verify mode's owner: lab.verify.acquire(lab.ftrace, ...) / release, or holding(...)."""
        return self.ftrace.verify

    def kretprobes(self) -> Kretprobes:
        """A kretprobe registry on this lab's kprobes and rethook."""
        return Kretprobes(self.ftrace, self.kprobes, self.rethook)

    def fprobes(self, design: str | None = None) -> Fprobes:
        """An fprobe registry on the chosen design (fgraph: 6.14+, rethook: 5.18-6.13); by default
        the design of the lab's kernel release."""
        if design is not None:
            return Fprobes(self.ftrace, self.fgraph, self.rethook, design, kernel=self.kernel, code=self.fprobe_code)
        design = "fgraph" if self.kernel.has("fprobe_on_fgraph") else "rethook"
        cores, kernel = (self.ftrace, self.fgraph, self.rethook), self.kernel
        return Fprobes(*cores, design, release=kernel, kernel=kernel, code=self.fprobe_code)

    def call(self, func: str | int, *args, ret: str = "i64"):
        """Run func, a function of the lab's object, with as many arguments as its signature says
        when one is known (tracers.calls); `ret` reads the return registers as its C type: i64,
        u64, i32, u32, u16, u8 or pair (Machine.call). When it returns, the ring buffer drains
        the batched fprobes' records: their handlers run for the call's hits (fprobe_batch.py; a
        call that fails leaves them for the next drain)."""
        if isinstance(func, str):  # an address is the caller's own business
            self.calls.check(func, args)
        result = self.machine.call(func, *args, ret=ret)
        self.fprobe_code.batch.flush()
        return result

    def check_calls(self, calls: CallSequence) -> None:
        """Every call of a sequence checked before any runs (a refused call runs nothing)."""
        for call in calls.calls:
            self.calls.check(call.name, call.args)

    def run_calls(self, calls: str | CallSequence, ret: str | None = None) -> CallsOutcome:
        """Run a CALL sequence (tracers.call_syntax): calls sharing buffers, each result read as
        its `:TYPE`, else as `ret`, else as s64; returns the results and the named buffers.

            lab.run_calls('adler_init(ctx=buf(8)); adler_update(ctx, b"abc", 3); adler_final(ctx):x32')
        """
        seq = parse_calls(calls) if isinstance(calls, str) else calls
        self.check_calls(seq)
        return run_calls(self, seq, ret)


def parse_call(text: str) -> tuple[str, tuple]:
    """One call of integer, bytes and str literals, as `Lab.call` takes it: `fib(20)` gives
    ('fib', (20,)) and `crc32_bitwise(0, b"123456789", 9)` passes the bytes by pointer (a str as
    its UTF-8). Anything else is a one-line FtlabError; `parse_calls` reads the whole language."""
    seq = parse_calls(text)
    call = seq.calls[0]
    if len(seq.calls) > 1 or seq.buffers or call.ret is not None:
        raise FtlabError(f"malformed CALL '{printable(text)}': expected one NAME(ARG, ...) of literals, e.g. fib(20)")
    return call.name, call.args
