"""`ftlab demo`: the same fixture on both arches: a patch site, a function trace, a verified snapshot."""

from emulator import arch as arches

from ..builtin.function import FunctionTracer
from ..lab import Lab
from ..output.sinks import ListSink, TextSink
from .views import site_rows

CALL = ("chain_a", 10)
SNAPSHOT = ("sum10", *range(1, 11))


def demo(out) -> None:
    for name in arches.ARCHES:
        lab = Lab.open("funcs", name)
        rule = "=" * 78
        out.write(f"{rule}\n{name}: fixtures/obj/{name}/funcs.o ({len(lab.sites)} patch sites)\n{rule}\n\n")
        out.write("The patch site of fib, as compiled, after ftrace_init_nop, and enabled:\n")
        for func, _ip, states in site_rows(lab):
            if func == "fib":
                for state, code, text in states:
                    out.write(f"    {state:<9} {code.hex(' '):<24} {text}\n")
        out.write(f"\nThe function tracer on {CALL[0]}{CALL[1:]!r}:\n\n".replace(",)", ")"))
        with FunctionTracer(lab, TextSink(out, lab.machine.symbols)):
            result = lab.call(*CALL)
        out.write(f"# result: {result}\n\n")
        keep = ListSink()
        with FunctionTracer(lab, keep, filters=[SNAPSHOT[0]], verify=True):
            lab.call(*SNAPSHOT)
        ev = keep.events[0]
        out.write(
            f"The ftrace_regs ftrace_caller saved at {SNAPSHOT[0]}(1, ..., 10), against the true "
            f"registers at the patch site:\n"
        )
        for check in ev.verification.checks:
            status = "equal" if check.equal else "DIFFERENT"
            note = "  (the address after the patch site, as the kernel defines it)" if check.by_meaning else ""
            out.write(f"    {check.field:<4} saved {check.captured:#018x}  true {check.truth:#018x}  {status}{note}\n")
        out.write(f"    not captured: {' '.join(ev.missing)}\n")
        out.write(f"    arguments: {list(ev.args)}\n\n")
    out.write(
        "More: ftlab compare funcs 'fib(3)' (every mechanism's snapshot and cost, both arches side by side),\n"
        "ftlab regs --arch arm64 funcs 'fib(3)' --at fib (field by field against the truth),\n"
        "ftlab trace --arch x86_64 funcs 'chain_a(10)' --tracer function_graph, and -e for probe events.\n"
    )
