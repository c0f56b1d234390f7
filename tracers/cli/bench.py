"""`ftlab bench` / `make bench`: speed and memory, measured in one run on both arches, each figure
beside its target (issue "Tracing at emulator speed"). Figures are medians of a few runs on
whatever machine this is; nothing here is asserted by the tests."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import unicorn

from emulator import FtlabError
from emulator import arch as arches

from ..builtin.function import FunctionTracer
from ..builtin.function_graph import FunctionGraphTracer
from ..builtin.probe import ProbeEventTracer
from ..core.fprobe import Fprobe
from ..lab import Lab, resolve
from ..output.outfile import OutputFile
from ..output.sinks import CountSink, GraphTextSink, TextSink

REPEAT = 3
TARGETS = {  # measure -> ({arch: target}, 'max' or 'min')
    "nop_sites_vs_unpatched": ({"arm64": 1.1, "x86_64": 1.1}, "max"),
    "function_events_per_s": ({"arm64": 1_000_000, "x86_64": 500_000}, "min"),
    "function_graph_events_per_s": ({"arm64": 600_000, "x86_64": 300_000}, "min"),
    "fprobe_handler_calls_per_s": ({"arm64": 200_000, "x86_64": 150_000}, "min"),
    "speedup_over_naive": ({"arm64": 15, "x86_64": 10}, "min"),
    # issue "Speed where users feel it": ratios measured in one run
    "function_text_vs_record": ({"arm64": 0.5, "x86_64": 0.5}, "min"),
    "function_graph_text_vs_record": ({"arm64": 0.5, "x86_64": 0.5}, "min"),
    "budget_vs_none": ({"arm64": 0.75, "x86_64": 0.75}, "min"),
    "tight_loop_budget_vs_none": ({"arm64": 1.5, "x86_64": 1.5}, "max"),
    "insns_clock_vs_counter": ({"arm64": 0.5, "x86_64": 0.5}, "min"),
    "probe_events_record_vs_record": ({"arm64": 0.5, "x86_64": 0.5}, "min"),
    "probe_events_text_vs_record": ({"arm64": 0.5, "x86_64": 0.5}, "min"),
    "peak_rss_mb_function_graph_fib27": ({"arm64": 300, "x86_64": 300}, "max"),
    "run_wall_s": ({"arm64": 0.5, "x86_64": 0.5}, "max"),
}


class _Bytes:
    """A ring-buffer consumer that only counts: recording speed without decoding."""

    def __init__(self, size):
        self.size, self.n = size, 0

    def __call__(self, chunk):
        self.n += len(chunk) // self.size


def _timed(fn) -> float:
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _paired(fn, other) -> float:
    """fn's time over other's: the median of REPEAT pairs, each run back to back after one warm-up
    run of each, so that a burst of load on a shared machine skews one pair, not the ratio."""
    fn(), other()
    ratios = []
    for _ in range(REPEAT):
        took = []
        for f in (fn, other):
            start = time.perf_counter()
            f()
            took.append(time.perf_counter() - start)
        ratios.append(took[0] / took[1])
    return statistics.median(ratios)


def _record_rate(lab, n, tracer=FunctionTracer, clock: str = "counter") -> float:
    """A built-in tracer's events/s through the ring buffer, recording only."""
    rates = []
    for _ in range(REPEAT):
        count = _Bytes(lab.ring_buffer.rec.size)
        with tracer(lab, CountSink(), clock=clock, consumer=count):
            start = time.perf_counter()
            lab.call("fib", n)
            took = time.perf_counter() - start
        rates.append(count.n / took)
    return statistics.median(rates)


# the probe events: an fprobe's entry with an argument, and its exit with the return value
PROBE_SPECS = ("f:a fib $arg1", "f:b fib%return $retval")
# the entry event as a kprobe's: on fib's ftrace site, a kprobe on ftrace where the lab has
# ftrace_regs_caller (x86_64's KPROBES_ON_FTRACE, in guest code); arm64's is a BRK, not measured
KPROBE_SPECS = ("p:a fib $arg1",)
# the exit event as a kretprobe's: its entry that kprobe, its return through the rethook trampoline,
# in guest code where the trampoline has a guest callback (x86_64); arm64's takes BRKs, not measured.
# maxactive 32, over fib(23)'s depth: every call is hooked (the default 10 would miss most of them)
KRETPROBE_SPECS = ("r32:b fib $retval",)


def _probe_rates(lab, n, make_sink=None, specs=PROBE_SPECS) -> tuple[float, float]:
    """The specs' events/s on fib(n), into a sink make_sink() makes, or (none) recorded only,
    through the guest path's ring buffer without decoding; and that over the function tracer's
    recording (_record_rate), paired as _text_rates pairs them."""
    rates, ratios = [], []
    for _ in range(REPEAT):
        tracer = ProbeEventTracer(lab, make_sink() if make_sink else CountSink(), specs)
        count = None
        with tracer:
            if make_sink is None:
                count = lab.ring_buffer.consumer = _Bytes(lab.ring_buffer.rec.size)
            start = time.perf_counter()
            lab.call("fib", n)
            took = time.perf_counter() - start
        events = count.n if count is not None else sum(p["hits"] for p in tracer.probe_counts().values())
        rates.append(events / took)
        ratios.append(rates[-1] / _record_rate(lab, n))
    return statistics.median(rates), statistics.median(ratios)


def _text_rates(lab, n, tracer, sink) -> tuple[float, float]:
    """A built-in tracer's events/s through the ring buffer into its text sink (writing to
    /dev/null), and that over recording alone (_record_rate): the median of pairs, each text run
    followed at once by the recording runs, so a burst of load on a shared machine skews one pair
    rather than the ratio."""
    rates, ratios = [], []
    for _ in range(REPEAT):
        with open(os.devnull, "w") as null, tracer(lab, sink(null, lab.machine.symbols)) as traced:
            start = time.perf_counter()
            lab.call("fib", n)
            took = time.perf_counter() - start
        rates.append(sum(traced.counts.values()) / took)
        ratios.append(rates[-1] / _record_rate(lab, n, tracer))
    return statistics.median(rates), statistics.median(ratios)


def _naive_rate(lab, n) -> float:
    events, took = naive_trace(lab, n)
    return len(events) / took


def naive_trace(lab, n) -> tuple[list, float]:
    """A tracer as a user would write it: a Python code hook on every function's entry, reading
    what it needs through the stock unicorn binding. Returns its events and the seconds fib(n) took."""
    uc, arch = lab.machine.uc, lab.arch
    ids = [arch.regs[r] for r in arch.arg_regs[:6]]
    sp_id, lr_id = arch.regs[arch.sp], arch.regs[arch.lr] if arch.lr else None
    events = []

    def hook(uc, addr, size, _):
        sp = uc.reg_read(sp_id)
        parent = uc.reg_read(lr_id) if lr_id else int.from_bytes(uc.mem_read(sp, 8), "little")
        events.append((addr, parent, sp, [uc.reg_read(r) for r in ids]))

    hooks = [uc.hook_add(unicorn.UC_HOOK_CODE, hook, begin=f.addr, end=f.addr) for f in lab.obj.functions]
    uc.ctl_flush_tb()
    start = time.perf_counter()
    lab.call("fib", n)
    took = time.perf_counter() - start
    for h in hooks:
        uc.hook_del(h)
    return events, took


CHILD = """import sys
from tracers.cli.main import main
code = main(sys.argv[1:])
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1], file=sys.stderr)
sys.exit(code)"""


def _child(argv) -> tuple[float, float]:
    """Wall time and peak RSS (MB) of a fresh `ftlab` process, as it reports itself: VmHWM, the
    high-water mark of its own memory (getrusage's maxrss would include the forked copy of this
    process, which Linux carries across exec)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wall = time.perf_counter() - start
    return wall, int(done.stderr.split()[-1]) / 1024


def measure(arch: str) -> dict:
    target = resolve("funcs", arch)[0]
    lab, bare = Lab(target), Lab(target, init=False)
    free = Lab(target, budget=0)
    r = {"arch": arch}
    fib25 = 2 * 121393 - 1
    r["unpatched_fib25_s"] = _timed(lambda: bare.call("fib", 25))
    r["nop_sites_fib25_s"] = _timed(lambda: lab.call("fib", 25))
    r["nop_sites_vs_unpatched"] = _paired(lambda: lab.call("fib", 25), lambda: bare.call("fib", 25))
    buf = bytes(range(256)) * 256
    r["buffer_loop_64k_s"] = _timed(lambda: lab.call("crc32_bitwise", 0, buf, len(buf)))
    r["tight_loop_budget_vs_none"] = _paired(
        lambda: lab.call("crc32_bitwise", 0, buf, len(buf)), lambda: free.call("crc32_bitwise", 0, buf, len(buf))
    )
    r["raw_fib25_calls_per_s"] = fib25 / r["nop_sites_fib25_s"]
    r["function_events_per_s"] = _record_rate(lab, 25)
    r["function_events_per_s_no_budget"] = _record_rate(free, 25)
    r["budget_vs_none"] = r["function_events_per_s"] / r["function_events_per_s_no_budget"]
    r["function_events_per_s_by_size"] = {f"fib({n})": _record_rate(lab, n) for n in (15, 20, 25, 27)}
    r["function_vs_raw"] = r["raw_fib25_calls_per_s"] / r["function_events_per_s"]
    r["function_graph_events_per_s"] = _record_rate(lab, 25, FunctionGraphTracer)
    r["function_graph_events_per_s_no_budget"] = _record_rate(free, 25, FunctionGraphTracer)
    r["fprobe_handler_calls_per_s"] = _fprobe_rate(lab, False)
    r["fprobe_batched_handler_calls_per_s"] = _fprobe_rate(lab, True)
    with FunctionTracer(lab, CountSink(), verify=True):
        verify = _timed(lambda: lab.call("fib", 18))
    r["verify_events_per_s"] = (2 * 4181 - 1) / verify
    r["insns_clock_events_per_s"] = _record_rate(lab, 25, clock="insns")
    r["insns_clock_vs_counter"] = r["insns_clock_events_per_s"] / r["function_events_per_s"]
    r["naive_events_per_s"] = _naive_rate(lab, 20)
    r["speedup_over_naive"] = r["function_events_per_s"] / r["naive_events_per_s"]
    r["speedup_over_naive_no_budget"] = r["function_events_per_s_no_budget"] / _naive_rate(free, 20)
    r["function_text_events_per_s"], r["function_text_vs_record"] = _text_rates(lab, 23, FunctionTracer, TextSink)
    r["function_graph_text_events_per_s"], r["function_graph_text_vs_record"] = _text_rates(
        lab, 23, FunctionGraphTracer, GraphTextSink
    )
    r["probe_events_per_s"], r["probe_events_record_vs_record"] = _probe_rates(lab, 23)
    r["probe_events_text_per_s"], r["probe_events_text_vs_record"] = _probe_rates(
        lab, 23, lambda: TextSink(open(os.devnull, "w"), lab.machine.symbols)
    )
    if lab.ftrace.regs_caller is not None:  # no key where p SYM is a breakpoint (arm64)
        r["kprobe_events_per_s"], r["kprobe_events_record_vs_record"] = _probe_rates(lab, 23, specs=KPROBE_SPECS)
    if lab.ftrace.regs_caller is not None and lab.rethook.code is not None:  # the same, and the return
        r["kretprobe_events_per_s"], r["kretprobe_events_record_vs_record"] = _probe_rates(
            lab, 23, specs=KRETPROBE_SPECS
        )
    with FunctionGraphTracer(lab, CountSink(), ring=False):
        graph = _timed(lambda: lab.call("fib", 18))
    r["function_graph_python_events_per_s"] = 2 * (2 * 4181 - 1) / graph
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "graph.txt")
        _, rss = _child(["trace", "--arch", arch, "funcs", "fib(27)", "--tracer", "function_graph", "--output", out])
        r["peak_rss_mb_function_graph_fib27"] = rss
        r["function_graph_fib27_file_mb"] = os.path.getsize(out) / 1e6
    r["run_wall_s"], _ = _child(["run", "--arch", arch, "funcs", "fib(20)"])
    return r


def _fprobe_rate(lab, batched: bool) -> float:
    """An fprobe's Python entry and exit handlers on fib(20), counting calls: handler calls/s,
    live (entered from the guest dispatch at each hit) or batched (called from the hits' ring-buffer
    records as the buffer drains, the last drain at the end of each call)."""
    fprobes, calls = lab.fprobes(), [0]

    def count(*_args) -> int:
        calls[0] += 1
        return 0

    fp = Fprobe(count, count, batched=batched)
    fprobes.register(fp, "fib")
    took = _timed(lambda: lab.call("fib", 20))
    fprobes.unregister(fp)
    expected = 2 * (2 * 10946 - 1)
    if calls[0] != REPEAT * expected:
        raise FtlabError(f"bench: fprobe (batched={batched}) made {calls[0]} handler calls, not {REPEAT * expected}")
    return expected / took


def _verdict(name: str, arch: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    targets, kind = TARGETS[name]
    want = targets[arch]
    ok = value <= want if kind == "max" else value >= want
    return f"{'<=' if kind == 'max' else '>='} {want:,}  {'ok' if ok else 'MISSED'}"


def _fmt(value) -> str:
    if isinstance(value, dict):
        return "  ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def machine() -> str:
    """The machine the figures come from: its CPU, cores, Python and unicorn."""
    model = "an unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, unicorn {unicorn.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def markdown(results: list[dict]) -> str:
    """The measures that have a target, as a Markdown table (the README's): a column per arch, each
    figure marked where it misses its target."""
    archs = [r["arch"] for r in results]
    lines = [f"| measure | {' | '.join(archs)} | target |", "|---|" + "---|" * len(archs) + "---|"]
    for name, (targets, kind) in TARGETS.items():
        cells = []
        for r in results:
            value = r.get(name)
            missed = _verdict(name, r["arch"], value).endswith("MISSED") if value is not None else False
            cells.append("" if value is None else _fmt(value) + (" — missed" if missed else ""))
        wants = [f"{'≤' if kind == 'max' else '≥'} {_fmt(targets[a])}" for a in archs]  # in the columns' order
        lines.append(f"| {name} | {' | '.join(cells)} | {wants[0] if len(set(wants)) == 1 else ' / '.join(wants)} |")
    return "\n".join(lines) + "\n"


def bench(out, json_file: OutputFile | None = None) -> list[dict]:
    """Measure both arches and print the figures, the machine they come from, and the measures
    with a target as the README's Markdown table; with json_file (checked before any measuring),
    also write them there as JSON."""
    results = []
    where = machine()
    out.write(f"machine: {where}\n")
    for name in arches.ARCHES:
        out.write(f"measuring {name} ...\n")
        out.flush()
        results.append({**measure(name), "machine": where})
    out.write("\n")
    for r in results:
        out.write(f"== {r['arch']}\n")
        for key, value in r.items():
            if key not in ("arch", "machine"):
                out.write(f"  {key:<40} {_fmt(value):>14}   {_verdict(key, r['arch'], value)}\n")
    out.write(
        "\nfunction: the function tracer through the guest ring buffer, recording only (no decoding);\n"
        "no_budget: the same with --budget 0 (budget_vs_none: the budget's native block hook, on the\n"
        "function tracer and on a tight loop, crc32_bitwise over 64 KiB);\n"
        "function_graph: both hooks in guest code, records through the ring buffer (as function);\n"
        "insns clock: the function tracer with the clock the native hook keeps in guest memory;\n"
        "fprobe, verify, function_graph_python: a Python callback per event;\n"
        "fprobe_batched: the same handlers, Fprobe(batched=True): called from the hits' ring-buffer\n"
        "records when the buffer drains (the hits enter no Python);\n"
        "naive: a Python code hook on every function reading registers through the stock binding;\n"
        "text: recording and formatting the kernel's text together (text_vs_record: over recording\n"
        "alone, both fib(23) in this run);\n"
        "probe_events: -e 'f:a fib $arg1' -e 'f:b fib%return $retval' on fib(23), recorded through the\n"
        "guest path's ring buffer (record_vs_record) and as the kernel's text (text_vs_record), over\n"
        "the function tracer's recording;\n"
        "kprobe_events: -e 'p:a fib $arg1' as probe_events, a kprobe on fib's ftrace site in guest code\n"
        "(x86_64 only: arm64's p SYM is a BRK kprobe, in Python);\n"
        "kretprobe_events: -e 'r32:b fib $retval' as probe_events, that kprobe and the rethook trampoline's\n"
        "return in guest code (x86_64 only: arm64's kretprobes take BRKs, in Python).\n\n"
    )
    out.write(markdown(results))
    if json_file is not None:
        json.dump(results, json_file.fh, indent=2)
        json_file.commit()
        out.write(f"figures written to {json_file.path}\n")
    return results
