"""The same traces print the same bytes whatever the host process looks like (issue #11).

The issue saw `trace --arch x86_64 funcs 'chain_a(10)' --notrace add3` (and `--filter '*'`, '**',
'[!a]*') fault in guest code in most runs by absolute path and in none by relative path: an
outcome that depended on the host process's memory layout. Nothing the guest sees may depend on
it: guest memory is zeroed host buffers the lab keeps alive (Machine._map), the lab's code and
data are built in one order at fixed addresses (Lab), filters are sets of guest addresses (ints,
whose order no hash seed changes), and no host address or id() reaches the guest or the output.

These run a set of traces (both arches; function, function_graph, probe events, --notrace and
--filter globs) in subprocesses that differ in everything the host layout depends on: the hash
seed, a large environment variable, the script's path relative or absolute, the current
directory, bytecode files written or not, -X importtime; and require byte-identical output, the
same as in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracers.cli.main import main

ROOT = Path(__file__).resolve().parent.parent

TRACES = [
    ["trace", "--arch", "x86_64", "funcs", "chain_a(10)", "--notrace", "add3"],
    ["trace", "--arch", "x86_64", "funcs", "chain_a(10)", "--filter", "*"],
    ["trace", "--arch", "x86_64", "funcs", "chain_a(10)", "--filter", "**"],
    ["trace", "--arch", "x86_64", "funcs", "chain_a(10)", "--filter", "[!a]*", "--format", "json"],
    ["trace", "--arch", "arm64", "funcs", "chain_a(10)", "--filter", "chain_*", "--notrace", "!chain_c"],
    [
        "trace",
        "--arch",
        "all",
        "funcs",
        "fib(6)",
        "--tracer",
        "function_graph",
        "--clock",
        "insns",
        "--funcgraph-retval",
        "--notrace",
        "add3",
    ],
    [
        "trace",
        "--arch",
        "x86_64",
        "funcs",
        "fib(4)",
        "--verify",
        "-e",
        "f:fibret fib%return r=$retval:s64",
        "-e",
        "p:fk fib+0x5 n=%di:s64",
    ],
    [
        "trace",
        "--arch",
        "arm64",
        "funcs",
        "fib(4)",
        "--tracer",
        "function_graph",
        "--clock",
        "insns",
        "-e",
        "p:fibk fib+0x18 n=%x0:s64",
        "-e",
        "r:fibr fib r=$retval:s64 s=$stack0",
    ],
    [
        "trace",
        "--arch",
        "arm64",
        "funcs",
        "add3(1, 2, 3)",
        "--format",
        "json",
        "--verify",
        "--kernel",
        "6.8",
        "-e",
        "r:e add3 a=$arg1 s=$stack",
    ],
    ["trace", "--arch", "x86_64", "funcs", "fib(8)", "--buffer-size", "7", "--buffer-mode", "overwrite"],
]

# Runs each command line given as JSON in argv[1] through main(), in-process, and prints what
# each printed, as the golden transcripts do.
DRIVER = """\
import contextlib, io, json, sys
from tracers.cli.main import main
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    sys.stdout.write(f"$ {argv}\\n{out.getvalue()}{err.getvalue()}[exit {code}]\\n")
"""


def _in_process(traces) -> str:
    text = []
    for argv in traces:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        text.append(f"$ {argv}\n{out.getvalue()}{err.getvalue()}[exit {code}]\n")
    return "".join(text)


def _env(seed: str, pad: int = 0, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FTLAB"))}
    env.update(PYTHONHASHSEED=seed, **extra)
    if pad:
        env["FTLAB_TEST_PADDING"] = "x" * pad  # moves everything the process allocates
    return env


def _run(tmp: Path, how: str, seed: str, pad: int = 0, traces=TRACES) -> str:
    """The driver in a subprocess, started `how`: rel (a relative script path, the package found
    by a relative PYTHONPATH), abs (absolute paths, another directory), or nobc (no bytecode
    written or read, -X importtime)."""
    script = tmp / "drive.py"
    script.write_text(DRIVER)
    args = [json.dumps(traces)]
    if how == "rel":
        cmd, cwd = [sys.executable, os.path.relpath(script, ROOT), *args], ROOT
        env = _env(seed, pad, PYTHONPATH=".")
    elif how == "abs":
        cmd, cwd = [sys.executable, str(script), *args], tmp
        env = _env(seed, pad, PYTHONPATH=str(ROOT))
    else:
        cmd, cwd = [sys.executable, "-B", "-X", "importtime", str(script), *args], tmp
        env = _env(seed, pad, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_every_trace_succeeds_in_process():
    text = _in_process(TRACES)
    assert text.count("[exit 0]") == len(TRACES), text
    assert "error" not in text


def test_same_bytes_in_differently_laid_out_processes(tmp_path):
    expected = _in_process(TRACES)
    for how, seed, pad in (("rel", "0", 0), ("abs", "1", 1 << 16), ("nobc", "random", 4099)):
        assert _run(tmp_path, how, seed, pad) == expected, (how, seed, pad)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 5, 8, 13, 21, 34, 50])
def test_same_bytes_under_more_hash_seeds_and_layouts(tmp_path, seed):
    expected = _in_process(TRACES)
    how = ("rel", "abs", "nobc")[seed % 3]
    assert _run(tmp_path, how, str(seed), pad=(seed * 7919) % 70000) == expected


@pytest.mark.slow
@pytest.mark.parametrize("how", ["rel", "abs"])
def test_the_issues_command_as_the_cli_runs_it(tmp_path, how):
    """`python -m tracers` itself, one process per run, as the issue ran `ftlab`."""
    argv = TRACES[0]
    expected = _in_process([argv]).split("\n", 1)[1].rsplit("[exit 0]", 1)[0]
    for seed, pad in ((0, 0), (7, 1), (11, 30000), (40, 65536)):
        env = _env(str(seed), pad, PYTHONPATH="." if how == "rel" else str(ROOT))
        done = subprocess.run(
            [sys.executable, "-m", "tracers", *argv],
            check=False,
            cwd=ROOT if how == "rel" else tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == expected, (seed, pad)
