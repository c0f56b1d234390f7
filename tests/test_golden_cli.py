"""`ftlab trace|replay --golden FILE [--update-golden]`: a golden written by one run matches the
next, is the very text the command prints without --golden, and a difference is a unified diff
that `patch` applies to the golden to give the new output."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ARCHES
from tracers.cli.main import main

CALL = "fib(3)"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def trace(arch, *extra):
    return ("trace", "--arch", arch, "funcs", CALL, *extra)


def other(arch):
    return next(a for a in ARCHES if a != arch)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_golden_written_by_one_run_matches_the_next(capsys, tmp_path, arch, fmt):
    golden = tmp_path / "fib.txt"
    printed = run(capsys, *trace(arch, "--format", fmt))
    assert printed[0] == 0
    assert run(capsys, *trace(arch, "--format", fmt, "--golden", str(golden), "--update-golden")) == (0, "", "")
    assert golden.read_text() == printed[1]  # what the command prints without --golden
    assert os.listdir(tmp_path) == ["fib.txt"]  # no temporary file left beside it
    assert run(capsys, *trace(arch, "--format", fmt, "--golden", str(golden))) == (0, "", "")  # quiet when equal


def _patched(tmp_path, golden, diff: str) -> str:
    """The golden with the diff applied by patch(1): the diff's independent reading."""
    if shutil.which("patch") is None:
        pytest.skip("patch(1) is not installed")
    result = tmp_path / "patched"
    subprocess.run(["patch", "-s", "-o", str(result), str(golden)], input=diff, text=True, check=True)
    return result.read_text()


def test_another_arch_differs_in_its_header_line(capsys, tmp_path, arch):
    golden = tmp_path / "fib.txt"
    assert run(capsys, *trace(arch, "--golden", str(golden), "--update-golden"))[0] == 0
    before = golden.read_bytes()
    code, diff, err = run(capsys, *trace(other(arch), "--golden", str(golden)))
    assert code == 1
    assert err == (
        f"ftlab: error: trace differs from {golden} (-1 +1 lines, the diff on stdout; --update-golden rewrites it)\n"
    )
    lines = diff.splitlines()
    assert lines[:2] == [f"--- {golden}", "+++ trace"]
    assert [line for line in lines if line[:1] in "+-"][2:] == [
        f"-# ftlab: Linux 7.0 model, {arch}",
        f"+# ftlab: Linux 7.0 model, {other(arch)}",
    ]
    assert _patched(tmp_path, golden, diff) == run(capsys, *trace(other(arch)))[1]
    assert golden.read_bytes() == before  # compared, not changed


def test_a_diff_of_a_golden_without_a_final_newline_applies(capsys, tmp_path, arch):
    golden = tmp_path / "fib.txt"
    out = run(capsys, *trace(arch))[1]
    golden.write_text(out.replace("fib <-fib\n", "fib <-ftlab_caller\n", 1).rstrip("\n"))
    code, diff, _ = run(capsys, *trace(arch, "--golden", str(golden)))
    assert code == 1 and "\\ No newline at end of file\n" in diff
    assert _patched(tmp_path, golden, diff) == out


def test_replay_compares_with_the_golden_trace_wrote(capsys, tmp_path, arch):
    golden, recording = tmp_path / "fib.txt", tmp_path / "fib.ftl"
    for fmt in ("text", "json"):
        assert run(capsys, *trace(arch, "--format", fmt, "--golden", str(golden), "--update-golden"))[0] == 0
        assert run(capsys, "record", "--arch", arch, "funcs", CALL, "-o", str(recording))[0] == 0
        assert run(capsys, "replay", str(recording), "--format", fmt, "--golden", str(golden)) == (0, "", "")
    golden.unlink()
    assert run(capsys, "replay", str(recording), "--golden", str(golden), "--update-golden") == (0, "", "")
    assert golden.read_text() == run(capsys, *trace(arch))[1]
    code, diff, err = run(capsys, "replay", str(recording), "--format", "json", "--golden", str(golden))
    assert code == 1 and diff.startswith(f"--- {golden}\n+++ trace\n") and err.startswith("ftlab: error: trace differs")


def test_a_failed_run_is_not_compared_and_leaves_the_golden(capsys, tmp_path, arch):
    golden = tmp_path / "fib.txt"
    golden.write_text("kept\n")
    for update in ([], ["--update-golden"]):
        code, out, err = run(capsys, *trace(arch, "--budget", "300", "--golden", str(golden), *update))
        assert code == 1 and err.startswith("ftlab: error: instruction budget of 300 exhausted")
        assert "\n# stopped: instruction budget" in out  # the trace so far, as without --golden
        assert golden.read_text() == "kept\n" and os.listdir(tmp_path) == ["fib.txt"]


def test_golden_errors_are_one_line_before_any_work(capsys, tmp_path):
    missing = tmp_path / "missing.txt"
    # the golden file is refused before the object (which does not exist either) is opened
    assert run(capsys, "trace", "--arch", "arm64", "nosuch.o", CALL, "--golden", str(missing)) == (
        1,
        "",
        f"ftlab: error: {missing}: No such file or directory (--update-golden writes it)\n",
    )
    is_a_directory = f"ftlab: error: {tmp_path}: Is a directory\n"
    assert run(capsys, *trace("arm64", "--golden", str(tmp_path))) == (1, "", is_a_directory)
    assert run(capsys, *trace("arm64", "--update-golden")) == (
        1,
        "",
        "ftlab: error: --update-golden writes the --golden FILE: name it\n",
    )
    assert run(capsys, *trace("arm64", "--golden", str(missing), "-o", str(tmp_path / "t"))) == (
        1,
        "",
        "ftlab: error: -o and --golden: the output is compared with (or written to) the --golden FILE; give one\n",
    )
    unwritable = tmp_path / "no" / "such" / "dir.txt"
    assert run(capsys, *trace("arm64", "--golden", str(unwritable), "--update-golden")) == (
        1,
        "",
        f"ftlab: error: {unwritable}: No such file or directory\n",
    )
    assert os.listdir(tmp_path) == []


def test_bpf_output_has_goldens_too(capsys, tmp_path, arch):
    """`ftlab bpf --golden`: the printk trace, the results and the maps, as the command prints them."""
    golden = tmp_path / "bpf.txt"
    prog = str(Path(__file__).resolve().parent.parent / "fixtures" / "obj" / "bpf" / arch / "kprobe.bpf.o")
    argv = ("bpf", "--arch", arch, "funcs", "add3(1, 2, 3)", "--prog", prog)
    printed = run(capsys, *argv)
    assert printed[0] == 0 and "bpf_trace_printk: add3 a=1 b=2 c=3" in printed[1]
    assert run(capsys, *argv, "--golden", str(golden), "--update-golden") == (0, "", "")
    assert golden.read_text() == printed[1]
    assert run(capsys, *argv, "--golden", str(golden)) == (0, "", "")
    code, out, _ = run(capsys, "bpf", "--arch", arch, "funcs", "add3(1, 2, 4)", "--prog", prog, "--golden", str(golden))
    assert code == 1 and "-           ftlab-1" in out and "c=4" in out
