"""`ftlab check --corpus DIR`: the per-object check on every object of a tree (a whole Debian
module tree: about 4,000 objects an arch), each object an independent task on an engine
(tracers.cluster: Dask, or a process pool), with a progress bar, a summary table and a JSON report.

A task's inputs are a path, the kernel release as text and an options dict; its output a plain
dict (the object's record), so any engine can ship them. The run is resumable: each finished
record is appended to a state file beside the report (REPORT.state, JSON lines) as it arrives, the
report is written when every object is done, and a later run with the same report skips the
objects either file already holds.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from emulator import FtlabError
from emulator.elf import elf_arch

from ..cluster import LOST, Engine, run_alone
from ..kernel_version import MODELLED, KernelVersion
from ..lab import Target
from ..output.outfile import OutputFile
from .check import check_object

SUFFIXES = (".o", ".ko")
FORMAT = 1  # the report's "ftlab_corpus" version


# The per-object check (issue #13's `ftlab check`).
DEFAULT_CHECK: Callable[..., Any] = check_object


def find_objects(root: Path) -> list[Path]:
    """Every .o and .ko file under root (symbolic links to directories not followed), in the order
    of their paths relative to root."""
    if not root.is_dir():
        raise FtlabError(f"--corpus {root}: not a directory")
    found = [
        Path(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.endswith(SUFFIXES) and os.path.isfile(os.path.join(folder, name))
    ]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _record(path: str, error: str | None = None) -> dict[str, Any]:
    return {"path": path, "arch": None, "ok": False, "failures": [], "checks": 0, "error": error, "seconds": 0.0}


def check_one(check: Callable[..., Any], path: str, kernel: str, options: dict[str, Any]) -> dict[str, Any]:
    """One object's record (the task every engine runs): its arch, whether it passed, the
    failures, the seconds it took, or the one-line error that stopped its check."""
    start = time.perf_counter()
    record = _record(path)
    try:
        target = Target(Path(path), elf_arch(Path(path)))
        record["arch"] = target.arch.name
        report = check(target, kernel=KernelVersion.parse(kernel), **options)
        record.update(ok=bool(report.ok), failures=[str(f) for f in report.failures], checks=len(report.rows))
    except FtlabError as err:
        record["error"] = str(err)
    except Exception as err:  # a lab bug: this object's, the run goes on
        record["error"] = f"internal error, {type(err).__name__}: {err}"
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def cause(record: dict[str, Any]) -> str:
    """What stopped an object, without what is particular to it (its path, names in quotes,
    numbers, details in parentheses): the error's, else the first failure's, first clause."""
    text = record["error"] or record["failures"][0]
    text = re.sub(r"^(?:.*?\.k?o: )+", "", text)  # the object's path (and name)
    text = re.split(r"[:;] ", text, maxsplit=1)[0]
    text = re.sub(r"'[^']*'", "'…'", text)
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\s*\([^()]*\)", "", text)
    text = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)\b", "N", text)
    return " ".join(text.split())


def status(record: dict[str, Any]) -> str:
    if record["ok"]:
        return "ok"
    if record["error"] is None:
        return "failed"
    return "crashed" if record["error"].startswith("worker process ") else "error"


STATUSES = ("ok", "failed", "error", "crashed")


@dataclass
class CorpusResult:
    root: Path
    header: dict[str, Any]  # what a resumed run must match: root, kernel, options
    records: list[dict[str, Any]]  # in path order, paths relative to root
    checked: int  # objects checked by this run (the others came from the report or its state)
    engine: str
    seconds: float

    def totals(self) -> dict[str, int]:
        counts = Counter(status(r) for r in self.records)
        return {"objects": len(self.records), **{s: counts[s] for s in STATUSES}}

    def causes(self) -> list[dict[str, Any]]:
        """Each cause of a not-ok object: how many, and the first such object."""
        examples: dict[str, str] = {}
        counts: Counter[str] = Counter()
        for record in self.records:
            if not record["ok"]:
                what = f"{status(record)}: {cause(record)}"
                counts[what] += 1
                examples.setdefault(what, record["path"])
        return [
            {"cause": what, "count": n, "example": examples[what]}
            for what, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "ftlab_corpus": FORMAT,
            **self.header,
            "engine": self.engine,
            "seconds": round(self.seconds, 3),
            "checked": self.checked,
            "totals": self.totals(),
            "causes": self.causes(),
            "objects": self.records,
        }


def state_path(report: Path) -> Path:
    return report.with_name(report.name + ".state")


def _load_done(report: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The records a previous run left for this header: the report's, then its state file's."""
    done: dict[str, dict[str, Any]] = {}
    documents: list[tuple[Path, dict[str, Any], list[dict[str, Any]]]] = []
    try:
        if report.is_file():
            data = json.loads(report.read_text())
            documents.append((report, data, data["objects"]))
        state = state_path(report)
        if state.is_file():
            first, *lines = state.read_text().split("\n")
            # the last line is partial when a run was killed while writing it: that object is checked again
            documents.append((state, json.loads(first), [json.loads(line) for line in lines[:-1]]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FtlabError(f"{report}: not a corpus report to resume ({err}): name another --report") from None
    for source, data, records in documents:
        theirs = {key: data.get(key) for key in header}
        if theirs != header:
            differ = ", ".join(
                f"{key} {theirs[key]!r}, not {header[key]!r}" for key in header if theirs[key] != header[key]
            )
            raise FtlabError(f"{source}: a run with {differ}: name another --report, or delete it to start over")
        done.update((r["path"], r) for r in records)
    return done


class Corpus:
    """The objects under root still to check for report: made before any work, so that a
    missing tree, an unwritable report or a report of another run is refused first."""

    def __init__(self, root: Path, report: Path, *, kernel: KernelVersion = MODELLED, options=None):
        self.root, self.report, self.kernel = root, report, kernel
        self.options: dict[str, Any] = options or {}
        plain = json.loads(json.dumps(self.options, default=str))  # as the report holds them
        self.header = {"root": str(root.resolve()), "kernel": str(kernel), "options": plain}
        paths = find_objects(root)
        self.relative = [path.relative_to(root).as_posix() for path in paths]
        self.output = OutputFile(str(report))
        try:
            names = set(self.relative)
            self.done = {rel: r for rel, r in _load_done(report, self.header).items() if rel in names}
        except FtlabError:
            self.output.abort()
            raise
        self.todo = [(rel, str(path)) for rel, path in zip(self.relative, paths, strict=True) if rel not in self.done]

    def run(self, engine: Engine, check: Callable[..., Any] = DEFAULT_CHECK, progress: IO[str] | None = None):
        """Check what is left on engine, then write the report. progress: where the progress bar
        goes (a terminal; else there is none)."""
        tasks = [(check, path, str(self.kernel), self.options) for _, path in self.todo]
        start = time.perf_counter()
        state = state_path(self.report)
        try:
            for record in _run(engine, tasks, [rel for rel, _ in self.todo], state, self.header, progress):
                self.done[record["path"]] = record
        except BaseException:
            self.output.abort()
            raise
        records = [self.done[rel] for rel in self.relative]
        result = CorpusResult(self.root, self.header, records, len(tasks), engine.name, time.perf_counter() - start)
        with self.output:
            json.dump(result.to_json(), self.output.fh, indent=1)
            self.output.fh.write("\n")
        state.unlink()
        return result


def run_corpus(
    root: Path,
    report: Path,
    engine: Engine,
    check: Callable[..., Any] = DEFAULT_CHECK,
    *,
    kernel: KernelVersion = MODELLED,
    options: dict[str, Any] | None = None,
    progress: IO[str] | None = None,
) -> CorpusResult:
    """Check every object under root that the report (or its state file) does not hold yet, on
    engine, and write the report."""
    return Corpus(root, report, kernel=kernel, options=options).run(engine, check, progress)


def _run(engine: Engine, tasks, names: list[str], state: Path, header, progress) -> Iterator[dict[str, Any]]:
    """Run the tasks, and yield each record, named by names[its index], as it comes, once appended
    to the state file (after the header, when the file is new)."""
    fresh = not state.is_file()
    if not fresh:  # after a killed run's partial last line (left out by _load_done), if any
        kept = state.read_bytes()
        state.write_bytes(kept[: kept.rfind(b"\n") + 1])
    with open(state, "a") as log, tqdm(total=len(tasks), unit="obj", file=progress, disable=None) as bar:
        if fresh:
            log.write(json.dumps(header) + "\n")
        bad = 0
        for index, outcome in engine.run(check_one, tasks):
            record = outcome
            if outcome is LOST:  # its worker died: alone in a process, it shows how
                record, died = run_alone(check_one, tasks[index])
                if died is not None:
                    record = _record(tasks[index][1], f"{died} while checking it (a crash in native code)")
            record["path"] = names[index]
            log.write(json.dumps(record) + "\n")
            log.flush()
            bad += not record["ok"]
            bar.set_postfix_str(f"{bad} not ok", refresh=False)
            bar.update()
            yield record


def summary(result: CorpusResult, out: IO[str]) -> None:
    """The table: objects per arch by status and the seconds their tasks took, then the causes of
    every object not ok."""
    rate = result.checked / result.seconds if result.seconds else 0.0
    out.write(
        f"# corpus {result.root}: {len(result.records)} objects, {result.checked} checked by this run "
        f"in {result.seconds:.1f} s ({rate:.1f} objects/s) on {result.engine}\n"
    )
    out.write(f"{'arch':<8}{'objects':>9}" + "".join(f"{s:>9}" for s in STATUSES) + f"{'seconds':>10}\n")
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for record in result.records:
        by_arch.setdefault(record["arch"] or "-", []).append(record)
    for arch, records in [*sorted(by_arch.items()), ("total", result.records)]:
        counts = Counter(status(r) for r in records)
        seconds = sum(r["seconds"] for r in records)
        out.write(f"{arch:<8}{len(records):>9}" + "".join(f"{counts[s]:>9}" for s in STATUSES) + f"{seconds:>10.1f}\n")
    causes = result.causes()
    if causes:
        out.write(f"\n{'count':>7}  cause (example)\n")
        for row in causes:
            out.write(f"{row['count']:>7}  {row['cause']} ({row['example']})\n")
