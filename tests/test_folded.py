"""--format folded: flame-graph stacks from function_graph, checked against the call tree Python
computes, the clock's durations, and the same trace replayed from a recording."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from helpers import ftlab
from tracers.cli.main import main


def fib_paths(n: int, depth: int = 1, out: Counter | None = None) -> Counter:
    """How many calls of fib each call path `fib;fib;...` has in fib(n)'s recursion."""
    out = Counter() if out is None else out
    out[";".join(["fib"] * depth)] += 1
    if n >= 2:
        fib_paths(n - 1, depth + 1, out)
        fib_paths(n - 2, depth + 1, out)
    return out


def folded(text: str) -> dict[str, int]:
    return {path: int(n) for path, _, n in (line.rpartition(" ") for line in text.splitlines())}


@pytest.mark.parametrize("n", [1, 4, 7])
def test_counter_weights_are_calls(capsys, arch, n):
    got = folded(
        ftlab(capsys, "trace", "--arch", arch, "--tracer", "function_graph", "funcs", f"fib({n})", "--format", "folded")
    )
    assert got == dict(fib_paths(n))
    assert sum(got.values()) == sum(fib_paths(n).values())  # 2*fib(n+1)-1 calls


def test_both_arches_each_under_its_root(capsys):
    got = folded(
        ftlab(
            capsys, "trace", "--arch", "all", "--tracer", "function_graph", "funcs", "chain_a(2)", "--format", "folded"
        )
    )
    want = {"chain_a": 1, "chain_a;chain_b": 1, "chain_a;chain_b;chain_c": 1, "chain_a;chain_c": 1}
    assert got == {f"{arch};{path}": n for arch in ("x86_64", "arm64") for path, n in want.items()}


def test_insns_weights_are_each_calls_own_instructions(capsys, arch):
    """Self weights sum to the outer call's duration, which the JSON trace gives."""
    argv = ["trace", "--arch", arch, "--tracer", "function_graph", "--clock", "insns", "funcs", "chain_a(3)"]
    got = folded(ftlab(capsys, *argv, "--format", "folded"))
    records = [json.loads(line) for line in ftlab(capsys, *argv, "--format", "json").splitlines()]
    [outer] = [r for r in records if r["type"] == "exit" and r["depth"] == 0]
    assert set(got) == {"chain_a", "chain_a;chain_b", "chain_a;chain_b;chain_c", "chain_a;chain_c"}
    assert all(n > 0 for n in got.values()) and sum(got.values()) == outer["duration"]


def test_replay_folds_as_the_trace_did(capsys, arch, tmp_path):
    rec = str(tmp_path / "fib.rec")
    traced = ftlab(
        capsys, "trace", "--arch", arch, "--tracer", "function_graph", "funcs", "fib(5)", "--format", "folded"
    )
    ftlab(capsys, "record", "--arch", arch, "--tracer", "function_graph", "funcs", "fib(5)", "-o", rec)
    assert ftlab(capsys, "replay", rec, "--format", "folded") == traced


def test_folded_needs_function_graph(capsys, arch):
    assert main(["trace", "--arch", arch, "funcs", "fib(3)", "--format", "folded"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "ftlab: error: --format folded needs the function_graph tracer's entries and exits, not function's\n",
    )
