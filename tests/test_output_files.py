"""Output paths (issue #11, "nothing lost"): `record -o`, `trace -o` and `bench --json` check the
path before any work, refuse a bad one in one line, and leave no partial file behind."""

from __future__ import annotations

import importlib
import json
import os
import stat

import pytest

from tracers.cli.main import main

cli = importlib.import_module("tracers.cli.main")  # the module (tracers.cli.main is also the function)
bench_module = importlib.import_module("tracers.cli.bench")

FULL = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


def error(capsys, *argv) -> str:
    """The one error line of a command that must fail with exit 1 (and print nothing else)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert (code, out) == (1, ""), (code, out, err)
    assert err.count("\n") == 1 and err.startswith("ftlab: error: "), err
    return err[len("ftlab: error: ") : -1]


def _no_work(monkeypatch):
    """Any emulation, or any measuring, fails the test: the path must be refused first."""

    def work(*args, **kwargs):
        raise AssertionError("work was done before the output path was checked")

    monkeypatch.setattr(cli, "Lab", work)
    monkeypatch.setattr(bench_module, "measure", work)


def _commands(path: str) -> list[list[str]]:
    return [
        ["record", "--arch", "arm64", "funcs", "fib(3)", "-o", path],
        ["trace", "--arch", "x86_64", "funcs", "fib(3)", "-o", path],
        ["bench", "--json", path],
    ]


@pytest.mark.parametrize("which", ["record", "trace", "bench"])
def test_a_bad_path_is_refused_before_any_work(capsys, monkeypatch, tmp_path, which):
    _no_work(monkeypatch)
    cases = [
        ("", "an empty output path: name a file"),
        (str(tmp_path), f"{tmp_path}: Is a directory"),
        (str(tmp_path / "no" / "such.out"), f"{tmp_path / 'no' / 'such.out'}: No such file or directory"),
        (str(tmp_path / "file" / "x"), None),  # a path through a file
    ]
    (tmp_path / "file").write_text("")
    if os.path.exists("/proc/version"):  # a regular file where no file can be made
        cases.append(("/proc/version", "/proc/version: cannot create a file in /proc: No such file or directory"))
    for path, message in cases:
        [argv] = [a for a in _commands(path) if a[0] == which]
        got = error(capsys, *argv)
        assert message is None or got == message, got
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_directory_or_file_is_refused(capsys, monkeypatch, tmp_path):
    _no_work(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    readonly = tmp_path / "ro.out"
    readonly.write_text("keep")
    readonly.chmod(0o400)
    for argv in _commands(str(locked / "x.out")):
        assert "Permission denied" in error(capsys, *argv)
    for argv in _commands(str(readonly)):
        assert error(capsys, *argv) == f"{readonly}: Permission denied"
    assert readonly.read_text() == "keep"


@FULL
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_dev_full_is_one_line(capsys, arch):
    for argv in _commands("/dev/full")[:2]:
        argv[2] = arch
        assert error(capsys, *argv) == "/dev/full: No space left on device"


@FULL
def test_bench_json_to_dev_full_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(bench_module, "measure", lambda arch: {"arch": arch, "run_wall_s": 0.1})
    code = main(["bench", "--json", "/dev/full"])
    err = capsys.readouterr().err
    assert code == 1 and err == "ftlab: error: /dev/full: No space left on device\n"


def test_bench_json_is_written_whole(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(bench_module, "measure", lambda arch: {"arch": arch, "run_wall_s": 0.1})
    path = tmp_path / "bench.json"
    assert main(["bench", "--json", str(path)]) == 0
    assert capsys.readouterr().out.endswith(f"figures written to {path}\n")
    assert [r["arch"] for r in json.loads(path.read_text())] == ["x86_64", "arm64"]
    assert os.listdir(tmp_path) == ["bench.json"]


def test_dev_null_takes_any_output(capsys):
    for argv in _commands("/dev/null")[:2]:
        assert main(argv) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_a_recording_an_error_stopped_keeps_its_records_and_says_why(capsys, arch, tmp_path):
    """Nothing recorded is lost: a recording the budget stopped holds its records and why it
    stopped (and no result), and its replay prints what the stopped trace printed, with the same
    error; a run refused before it began (a bad call) leaves no file and keeps the old one."""
    path = tmp_path / "fib.ftl"
    run = ["--arch", arch, "--budget", "5000", "funcs", "fib(25)"]
    stopped = error(capsys, "record", *run, "-o", str(path))
    assert "instruction budget of 5,000 exhausted" in stopped
    assert main(["replay", str(path)]) == 1
    replayed = capsys.readouterr()
    assert main(["trace", *run]) == 1
    assert capsys.readouterr() == replayed and replayed.err == f"ftlab: error: {stopped}\n"
    path.write_text("the old one")
    assert "no symbol 'nosuch'" in error(capsys, "record", "--arch", arch, "funcs", "nosuch(1)", "-o", str(path))
    assert path.read_text() == "the old one"
    path.unlink()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_a_trace_an_error_stopped_keeps_its_events_and_says_why(capsys, arch, tmp_path):
    """Nothing recorded is lost: a text trace the budget stopped is written with the events so far
    and a last line saying why, as on stdout, so it does not look complete; an error before the
    trace began (a bad call) leaves no file."""
    path = tmp_path / "fib.txt"
    argv = ["trace", "--arch", arch, "--budget", "5000", "funcs", "fib(25)", "-o", str(path)]
    assert "instruction budget of 5,000 exhausted" in error(capsys, *argv)
    text = path.read_text().splitlines()
    assert "fib <-fib" in text[-2] and text[-1].startswith("# stopped: instruction budget of 5,000 exhausted")
    path.unlink()
    assert "no symbol 'nosuch'" in error(capsys, "trace", "--arch", arch, "funcs", "nosuch(1)", "-o", str(path))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_a_finished_output_is_in_place_with_the_usual_mode(capsys, arch, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    for cmd, name in (("record", "fib.ftl"), ("trace", "fib.txt")):
        path = tmp_path / name
        assert main([cmd, "--arch", arch, "funcs", "fib(3)", "-o", str(path)]) == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert capsys.readouterr().err == ""
    assert "fib <-fib" in (tmp_path / "fib.txt").read_text()
    assert sorted(os.listdir(tmp_path)) == ["fib.ftl", "fib.txt"]
    assert main(["replay", str(tmp_path / "fib.ftl")]) == 0
    assert capsys.readouterr().out == (tmp_path / "fib.txt").read_text()


def test_record_arch_all_is_refused(capsys, monkeypatch, tmp_path):
    _no_work(monkeypatch)
    message = error(capsys, "record", "--arch", "all", "funcs", "fib(3)", "-o", str(tmp_path / "x.ftl"))
    assert message == "record: --arch all: a recording holds one arch; record each (--arch x86_64, --arch arm64)"
    assert os.listdir(tmp_path) == []
