"""`ftlab bench` / `make bench`: emulation and tracing speed, measured in one run on both arches."""
from __future__ import annotations

import json
import statistics
import time

from emulator import arch as arches

from .ftrace import FtraceOps
from .function import FunctionTracer
from .function_graph import FunctionGraphTracer
from .lab import Lab

WORKLOAD = ("fib", 20)          # 21,891 calls
REPEAT = 5


class _Count:
    def __init__(self):
        self.n = 0

    def begin(self, *a):
        pass

    def event(self, ev):
        self.n += 1

    def end(self, summary):
        pass


def _median(fn) -> float:
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(arch: str) -> dict:
    lab = Lab.open("funcs", arch)
    m = lab.machine
    m.count_instructions(True)
    before = m.insns
    lab.call(*WORKLOAD)
    insns = m.insns - before
    m.count_instructions(False)
    raw = _median(lambda: lab.call(*WORKLOAD))
    sink = _Count()
    with FunctionTracer(lab, sink):
        lab.call(*WORKLOAD)
        calls = sink.n
        traced = _median(lambda: lab.call(*WORKLOAD))
    with FunctionGraphTracer(lab, _Count()):
        graph = _median(lambda: lab.call(*WORKLOAD))
    hits = [0]
    ops = FtraceOps(lambda *a: hits.__setitem__(0, hits[0] + 1), name="empty")
    lab.ftrace.register(ops)
    empty = _median(lambda: lab.call(*WORKLOAD))
    lab.ftrace.unregister(ops)
    return {
        "arch": arch, "workload": f"{WORKLOAD[0]}({WORKLOAD[1]})", "calls": calls, "insns": insns,
        "raw_s": raw, "raw_insns_per_s": insns / raw,
        "empty_ops_s": empty, "empty_ops_calls_per_s": calls / empty,
        "function_s": traced, "function_events_per_s": calls / traced,
        "function_vs_raw": traced / raw,
        "function_graph_s": graph, "function_graph_events_per_s": 2 * calls / graph,
        "function_graph_vs_raw": graph / raw,
    }


def bench(out, json_path: str | None = None) -> list[dict]:
    results = [measure(a) for a in arches.ARCHES]
    out.write(f"workload: {results[0]['workload']}, median of {REPEAT} runs, sites initialised (NOPs) "
              f"when not traced\n\n")
    out.write(f"{'arch':<8} {'calls':>7} {'insns':>9} {'raw':>9} {'raw insn/s':>12} {'empty ops/s':>12} "
              f"{'function ev/s':>14} {'vs raw':>7} {'graph ev/s':>11} {'vs raw':>7}\n")
    for r in results:
        out.write(f"{r['arch']:<8} {r['calls']:>7} {r['insns']:>9} {r['raw_s'] * 1e3:>7.1f}ms "
                  f"{r['raw_insns_per_s'] / 1e6:>10.1f}M {r['empty_ops_calls_per_s'] / 1e3:>10.1f}k "
                  f"{r['function_events_per_s'] / 1e3:>12.1f}k {r['function_vs_raw']:>6.0f}x "
                  f"{r['function_graph_events_per_s'] / 1e3:>9.1f}k {r['function_graph_vs_raw']:>6.0f}x\n")
    out.write("\nempty ops: a registered ftrace_ops whose Python callback only counts (the dispatch cost);\n"
              "function: the function tracer, an event with its ftrace_regs snapshot per call;\n"
              "function_graph: an entry and an exit event per call (both count); vs raw: time / raw time.\n")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=2)
        out.write(f"figures written to {json_path}\n")
    return results
