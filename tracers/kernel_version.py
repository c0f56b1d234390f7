"""The kernel release the lab models, and the older releases whose behaviour it can show.

The lab models one named mainline release (`MODELLED`). Where a mechanism changed in a way worth
seeing, `--kernel VERSION` (`Lab(..., kernel=...)`) selects an older release and the lab behaves
as that release does; every such change is listed in `CHANGES`, with the release that brought it.
A leaf module: everything in tracers/ may read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emulator import FtlabError


@dataclass(frozen=True, order=True)
class KernelVersion:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> KernelVersion:
        """`6.17` (a `v` prefix and a `.N` stable suffix are accepted, and ignored)."""
        m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", text.strip())
        if m is None:
            raise FtlabError(f"kernel version '{text}': expected MAJOR.MINOR, e.g. {MODELLED}")
        version = cls(int(m.group(1)), int(m.group(2)))
        if not OLDEST <= version <= MODELLED:
            raise FtlabError(f"kernel version {version}: the lab models {OLDEST} to {MODELLED}")
        return version

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def has(self, change: str) -> bool:
        """Whether this release has one of the CHANGES."""
        return self >= CHANGES[change][0]


# The release the lab models by default. Its mechanisms were read in 6.17's source; what changed
# after that in what the lab shows is in CHANGES, and what it does not model is in the README.
MODELLED = KernelVersion(7, 0)
# rethook and fprobe came in 5.18; nothing older is modelled.
OLDEST = KernelVersion(5, 18)

# The behaviours that differ between modelled releases: name -> (first release with it, what it is).
CHANGES: dict[str, tuple[KernelVersion, str]] = {
    "fprobe_on_fgraph": (
        KernelVersion(6, 14),
        "fprobe runs on fgraph with ftrace_regs (commit 4346ba160409); before, on ftrace + rethook",
    ),
    "funcgraph_retval": (
        KernelVersion(6, 5),
        "the function_graph tracer's funcgraph-retval option (commit a1be9ccc57f0); before, no return values",
    ),
    "funcgraph_retval_ret": (
        KernelVersion(6, 13),
        (
            "funcgraph-retval prints `/* ret=0x31 */` and `} /* f ret=-22 */` (commit 21e92806d39c); "
            "before, `/* = 0x31 */` and `} /* f = -22 */`"
        ),
    ),
    "probe_btf_args": (
        KernelVersion(6, 5),
        (
            "probe events read BTF: parameter names, $arg* and a typed $retval (commits b576e09701c7, "
            "18b1e870a496, fd26290ec89d); before, $argN only"
        ),
    ),
    "funcgraph_args": (
        KernelVersion(6, 15),
        (
            "the function_graph tracer's funcgraph-args option, `f(n=10) {` from BTF (commits "
            "533c20b062d7, ff5c9c576e75); before, no arguments"
        ),
    ),
    "funcgraph_args_unsigned_hex": (
        KernelVersion(6, 17),
        "print_function_args() prints unsigned ints in hex (commit 3ca824369b71); 6.15-6.16 in decimal",
    ),
    "fprobe_entry_only_ftrace": (
        KernelVersion(6, 19),
        (
            "an fprobe with no exit handler runs on fprobe_ftrace_ops, off the shadow stack (commits "
            "2c67dc457bc6, cd06078a38aa); before, on fgraph like every fprobe"
        ),
    ),
    "arm64_partial_regs_el1h": (
        KernelVersion(6, 18),
        (
            "arm64 ftrace_partial_regs() sets pstate = PSR_MODE_EL1h (commit fd2f74f8f3d3); before, "
            "pstate 0 (EL0t) made user_mode() true and bpf_get_stackid() return -EFAULT"
        ),
    ),
    "x86_arch_ftrace_partial_regs": (
        KernelVersion(6, 18),
        (
            "x86 arch_ftrace_partial_regs() sets cs = __KERNEL_CS and clears X86_EFLAGS_FIXED "
            "(commit 20a0bc10272f, 6.18-rc6); before, cs and flags as the trampoline left them"
        ),
    ),
    "x86_partial_regs_flags_fixed": (
        KernelVersion(7, 0),
        "x86 arch_ftrace_partial_regs() sets X86_EFLAGS_FIXED (commit aea251799998); 6.18-6.19 cleared it",
    ),
    "x86_return_to_handler_orc": (
        KernelVersion(6, 18),
        (
            "x86 return_to_handler steps back over the return slot for the ORC unwinder and stores the "
            "ftrace_regs' own address as its sp (commit 20a0bc10272f, 6.18-rc6); before, rax, rdx and rbp only"
        ),
    ),
    "x86_return_to_handler_entry_sp": (
        KernelVersion(7, 0),
        (
            "x86 return_to_handler stores the sp the function returned with (commit 8bc11700e0d2); "
            "6.18-6.19 stored the ftrace_regs' address"
        ),
    ),
    "arm64_call_ops": (
        KernelVersion(6, 3),
        (
            "arm64 DYNAMIC_FTRACE_WITH_CALL_OPS (commit baaf553d3bc3): ftrace_caller calls the ftrace_ops "
            "in the 8-byte literal before a -fpatchable-function-entry=4,2 function; before, function_trace_op"
        ),
    ),
    "arm64_direct_calls": (
        KernelVersion(6, 4),
        (
            "arm64 ftrace direct calls (commit 2aa6ac03516d), so BPF fentry/fexit/fmod_ret on kernel "
            "functions; before, -ENOTSUPP"
        ),
    ),
    "arm64_kretprobe_brk": (
        KernelVersion(6, 9),
        (
            "arm64 kretprobes return by BRK #7 (commit 253751233b19), with the exception's pt_regs; "
            "before, __kretprobe_trampoline built PSTATE from MRS and lost PAN"
        ),
    ),
    "kprobe_session": (
        KernelVersion(6, 10),
        "BPF kprobe.session programs: one program at entry and exit on fprobe, sharing a cookie (commit 535a3692ba72)",
    ),
    "ftrace_partial_regs_update": (
        KernelVersion(7, 0),
        (
            "kprobe.multi writes a program's pt_regs changes (ip, return value) back to ftrace_regs "
            "(commit 276f3b6daf60); before, arm64's copy dropped them: bpf_override_return did nothing"
        ),
    ),
    "bpf_nr_args_low_byte": (
        KernelVersion(7, 0),
        (
            "the verifier's inlined bpf_get_func_arg/_arg_cnt read nr_args as ctx[-1] & 0xff, the trampoline's "
            "higher bits holding fsession flags ('bpf: use last 8-bits for the nr_args in trampoline', "
            "bpf-next January 2026, the 7.0 merge window); before, the whole word"
        ),
    ),
}
