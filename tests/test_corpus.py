"""`ftlab check --corpus DIR` (issue #13): every object of a tree checked as an independent task on
Dask (when installed) or a process pool, with a progress bar, a summary, a JSON report and a
resumable run. The trees are made in tmp_path from the committed fixtures; the checks run here are
small module-level functions (a worker imports them by name), so what the runner records is
compared with what each check was made to say, and the arch with the ELF header pyelftools reads."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from emulator import FtlabError
from fixtures import catalog
from tracers import cluster
from tracers.cli.main import main
from tracers.cluster import DaskCluster, ProcessPool
from tracers.conformance.corpus import cause, find_objects, run_corpus, state_path
from tracers.kernel_version import KernelVersion

OBJ = Path(catalog.__file__).parent / "obj"
# the tree: (path in the tree, committed fixture or None for a file that is no object)
TREE = {
    "arm64/lib/funcs.o": "arm64/funcs.o",
    "arm64/state.o": "arm64/state.o",
    "x86_64/funcs.o": "x86_64/funcs.o",
    "x86_64/drivers/net/fail-me.o": "x86_64/state.o",
    "x86_64/bad.ko": None,
}
MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    for rel, fixture in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if fixture is None:
            (root / rel).write_bytes(b"not an object\n")
        else:
            shutil.copy(OBJ / fixture, root / rel)
    (root / "README").write_text("not a .o or .ko: not part of the corpus\n")
    return root


def new_engine(name: str):
    if name == "dask":
        pytest.importorskip("distributed")
        return DaskCluster(2)
    return ProcessPool(2)


@pytest.fixture(params=["process pool", "dask"])
def engine(request):
    runner = new_engine(request.param)
    yield runner
    runner.close()


class Report:
    def __init__(self, target, failures):
        self.failures, self.rows, self.ok = failures, [("f", "m", "ok", "")] * 3, not failures


def named_check(target, *, kernel, log=None):
    """Fails the objects named fail-*, refuses those named refuse-*; `log`: a folder where each
    call leaves a file named after the object, so a test sees which objects were checked."""
    assert isinstance(kernel, KernelVersion)
    if log is not None:
        Path(log, target.path.name + "." + target.arch.name).touch()
    if target.path.name.startswith("refuse-"):
        raise FtlabError(f"{target.path}: refused at 0x1234 'sym'")
    if target.path.name.startswith("boom-"):
        raise KeyError("boom")
    if target.path.name.startswith("crash-"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return Report(
        target, [f"{target.path.name}: fib under kprobe: x0 differs at 0x40"] * target.path.name.startswith("fail-")
    )


def elf_machine(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return MACHINES[ELFFile(fh).header["e_machine"]]
    except Exception:
        return None


def test_report_content(tree, tmp_path, engine):
    report = tmp_path / "r.json"
    result = run_corpus(tree, report, engine, named_check, progress=io.StringIO())
    data = json.loads(report.read_text())
    assert data["objects"] == result.records
    assert [r["path"] for r in data["objects"]] == sorted(TREE)  # path order, not completion order
    for record in data["objects"]:
        path = tree / record["path"]
        assert record["arch"] == elf_machine(path)
        assert record["seconds"] >= 0
        if TREE[record["path"]] is None:
            assert (record["ok"], record["checks"]) == (False, 0)
            assert record["error"].startswith(f"{path}: ") and "\n" not in record["error"]
        elif path.name.startswith("fail-"):
            assert (record["ok"], record["error"]) == (False, None)
            assert record["failures"] == ["fail-me.o: fib under kprobe: x0 differs at 0x40"]
        else:
            assert (record["ok"], record["failures"], record["checks"], record["error"]) == (True, [], 3, None)
    assert data["totals"] == {"objects": 5, "ok": 3, "failed": 1, "error": 1, "crashed": 0}
    assert [c["count"] for c in data["causes"]] == [1, 1]
    assert {c["example"] for c in data["causes"]} == {"x86_64/bad.ko", "x86_64/drivers/net/fail-me.o"}
    assert data["root"] == str(tree.resolve()) and data["engine"] == engine.name
    assert not state_path(report).exists()


def test_errors_are_the_objects_not_the_runs(tree, tmp_path, engine):
    """A check that raises FtlabError or any other exception is that object's record; every other
    object is still checked."""
    for name in ("refuse-1.o", "boom-2.o"):
        shutil.copy(OBJ / "arm64/funcs.o", tree / name)
    result = run_corpus(tree, tmp_path / "r.json", engine, named_check)
    records = {r["path"]: r for r in result.records}
    assert records["refuse-1.o"]["error"] == f"{tree / 'refuse-1.o'}: refused at 0x1234 'sym'"
    assert records["boom-2.o"]["error"] == "internal error, KeyError: 'boom'"
    assert result.totals() == {"objects": 7, "ok": 3, "failed": 1, "error": 3, "crashed": 0}


# dask: 10 s, as the crashing task is tried on a restarted worker 4 times (allowed-failures)
@pytest.mark.parametrize("name", ["process pool", pytest.param("dask", marks=pytest.mark.slow)])
def test_a_crash_is_the_objects(tree, tmp_path, name):
    """A worker process that dies (a segfault in native code) is that object's record, found by
    running it again alone; the objects beside it in the same worker are checked as usual."""
    shutil.copy(OBJ / "arm64/funcs.o", tree / "crash-3.o")
    runner = new_engine(name)
    try:
        result = run_corpus(tree, tmp_path / "r.json", runner, named_check)
    finally:
        runner.close()
    records = {r["path"]: r for r in result.records}
    died = "worker process killed by SIGSEGV while checking it (a crash in native code)"
    assert records["crash-3.o"]["error"] == died
    assert result.totals() == {"objects": 6, "ok": 3, "failed": 1, "error": 1, "crashed": 1}


def test_causes_leave_out_what_is_particular():
    def record(error, failures=()):
        return {"path": "a/b.ko", "error": error, "failures": list(failures)}

    assert cause(record("/x/y z.ko: 2 undefined symbols: a (used at f+0x3 (.text+0x9)), b; supply")) == (
        "N undefined symbols"
    )
    assert cause(record("/x/b.ko: undefined symbol 'kfree' (used at f+0x3 (.text+0x9)); supply it")) == (
        "undefined symbol '…'"
    )
    assert cause(record(None, ["fib under kprobe: x0 differs at 0x40", "other"])) == "fib under kprobe"
    assert cause(record(None, ["FAIL b.ko: /x/b.ko: 3 undefined symbols: a (used at f+0x3), b, c"])) == (
        "N undefined symbols"  # check_object's line for an object it cannot load
    )


class Interrupted(ProcessPool):
    """A process pool whose run is interrupted (Ctrl-C) after `after` objects."""

    def __init__(self, after):
        super().__init__(1)
        self.after = after

    def run(self, fn, tasks):
        for n, outcome in enumerate(super().run(fn, tasks)):
            if n == self.after:
                raise KeyboardInterrupt
            yield outcome


def test_resume_skips_what_is_done(tree, tmp_path):
    report, log = tmp_path / "r.json", tmp_path / "log"
    log.mkdir()
    options = {"log": str(log)}
    with pytest.raises(KeyboardInterrupt):
        run_corpus(tree, report, Interrupted(2), named_check, options=options)
    assert not report.exists()  # no report that looks complete
    header, *lines = state_path(report).read_text().splitlines()
    assert json.loads(header)["options"] == options and len(lines) == 2
    saved = {json.loads(line)["path"] for line in lines}
    with open(state_path(report), "a") as state:  # killed while writing a record
        state.write('{"path": "x86_64/fu')

    for path in log.iterdir():
        path.unlink()
    result = run_corpus(tree, report, ProcessPool(2), named_check, options=options)
    assert result.checked == 3 and len(result.records) == 5
    rest = sorted(f"{Path(rel).name}.{elf_machine(tree / rel)}" for rel in set(TREE) - saved if TREE[rel])
    assert sorted(p.name for p in log.iterdir()) == rest  # bad.ko has no arch: refused before the check
    assert not state_path(report).exists()

    for path in log.iterdir():
        path.unlink()
    again = run_corpus(tree, report, ProcessPool(2), named_check, options=options)
    assert again.checked == 0 and list(log.iterdir()) == []
    assert again.records == result.records

    (tree / "x86_64" / "new.o").write_bytes((tree / "x86_64" / "funcs.o").read_bytes())
    (tree / "arm64" / "state.o").unlink()
    added = run_corpus(tree, report, ProcessPool(2), named_check, options=options)
    assert added.checked == 1 and sorted(p.name for p in log.iterdir()) == ["new.o.x86_64"]
    assert [r["path"] for r in added.records] == sorted({*TREE, "x86_64/new.o"} - {"arm64/state.o"})

    with pytest.raises(FtlabError, match=r"^\S+r\.json: a run with kernel '7\.0', not '6\.1': name another --report"):
        run_corpus(tree, report, ProcessPool(2), named_check, kernel=KernelVersion.parse("6.1"), options=options)


def test_engine_choice(monkeypatch):
    """Dask when it is installed, else a process pool on every core; an existing cluster's address
    without Dask is refused."""
    monkeypatch.setattr(cluster, "dask_available", lambda: False)
    pool = cluster.engine()
    assert isinstance(pool, ProcessPool) and pool.workers == os.cpu_count()
    assert cluster.engine(3).name == "process pool (3 workers)"
    with pytest.raises(FtlabError, match=r"^--scheduler tcp://h:8786: Dask is not installed"):
        cluster.engine(scheduler="tcp://h:8786")


def test_existing_cluster(tree, tmp_path, capsys):
    """--scheduler ADDRESS: the tasks go to that cluster's workers."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as local:
        code = main(
            [
                "check",
                "--corpus",
                str(tree),
                "--report",
                str(tmp_path / "r.json"),
                "--scheduler",
                local.scheduler_address,
            ]
        )
    assert code == 1
    out = capsys.readouterr().out
    assert out.startswith(f"# corpus {tree}: 5 objects, 5 checked by this run in ")
    assert out.splitlines()[0].endswith(f"on dask cluster at {local.scheduler_address} (1 worker)")


def test_deterministic_report(tree, tmp_path):
    """The same tree gives the same report, whatever the workers and the order tasks finish in
    (the seconds and the engine aside)."""

    def stable(path):
        data = json.loads(path.read_text())
        for record in data["objects"]:
            record["seconds"] = 0
        return {k: v for k, v in data.items() if k not in ("seconds", "engine")}

    run_corpus(tree, tmp_path / "one.json", ProcessPool(1), named_check)
    run_corpus(tree, tmp_path / "two.json", ProcessPool(2), named_check)
    assert stable(tmp_path / "one.json") == stable(tmp_path / "two.json")


def test_find_objects(tree):
    assert [p.relative_to(tree).as_posix() for p in find_objects(tree)] == sorted(TREE)
    with pytest.raises(FtlabError, match="not a directory"):
        find_objects(tree / "README")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress(tree, tmp_path):
    """A terminal gets a progress bar, redrawn in place, ending at every object; anything else
    gets none (no flood of carriage returns in a CI log)."""
    tty = Terminal()
    run_corpus(tree, tmp_path / "r.json", ProcessPool(1), named_check, progress=tty)
    assert "\r" in tty.getvalue() and "5/5" in tty.getvalue().split("\r")[-1]
    assert "\n" not in tty.getvalue().rstrip("\n")
    log = io.StringIO()
    run_corpus(tree, tmp_path / "r2.json", ProcessPool(1), named_check, progress=log)
    assert log.getvalue() == ""


def test_cli(tree, tmp_path, capfd):
    """The command with the default check (ftlab check's): the table on stdout, one error line, exit status 1 as
    one object is not ok; nothing else on stderr (not a terminal: no progress bar)."""
    report = tmp_path / "r.json"
    code = main(["check", "--corpus", str(tree), "--report", str(report), "--workers", "1"])
    out, err = capfd.readouterr()
    assert code == 1
    assert err == f"ftlab: error: 1 of 5 objects not ok (report: {report})\n"
    lines = out.splitlines()
    assert lines[0].startswith(f"# corpus {tree}: 5 objects, 5 checked by this run in ")
    assert lines[1].split() == ["arch", "objects", "ok", "failed", "error", "crashed", "seconds"]
    assert [line.split()[:6] for line in lines[2:6]] == [
        ["-", "1", "0", "0", "1", "0"],
        ["arm64", "2", "2", "0", "0", "0"],
        ["x86_64", "2", "2", "0", "0", "0"],
        ["total", "5", "4", "0", "1", "0"],
    ]
    assert lines[7:] == ["  count  cause (example)", "      1  error: not an ELF file (x86_64/bad.ko)"]
    records = json.loads(report.read_text())["objects"]
    assert [r["arch"] for r in records] == [elf_machine(tree / r["path"]) for r in records]


def test_cli_refusals(tmp_path, capsys):
    assert main(["check", "--corpus", str(tmp_path / "none"), "--report", str(tmp_path / "r.json")]) == 1
    assert capsys.readouterr().err == f"ftlab: error: --corpus {tmp_path / 'none'}: not a directory\n"
    assert main(["check", "--report", str(tmp_path / "r.json")]) == 1
    assert capsys.readouterr().err == "ftlab: error: check: name an object (OBJ) or a tree of them (--corpus DIR)\n"
    assert main(["check", "funcs", "--corpus", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"ftlab: error: check: give OBJ (funcs) or --corpus DIR ({tmp_path}), not both\n"
    assert main(["check", "--corpus", str(tmp_path), "--scheduler", "tcp://h:1", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert err == "ftlab: error: --workers: the cluster at --scheduler tcp://h:1 has its own workers\n"
    report = tmp_path / "r.json"
    report.write_text("[]")
    assert main(["check", "--corpus", str(tmp_path), "--report", str(report), "--workers", "1"]) == 1
    assert capsys.readouterr().err.startswith(f"ftlab: error: {report}: not a corpus report to resume (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file left
