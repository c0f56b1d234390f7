"""Golden files: a command's expected output kept verbatim, compared byte for byte with a new run
and shown as a unified diff when they differ, as uftrace's runtest and the kernel's ftracetest keep
theirs. The lab's output is deterministic by construction (the counter and insns clocks, fixed
addresses), so a golden written on one run matches every later run of the same command.

`ftlab trace|replay --golden FILE [--update-golden]` and the pytest plugin (tracers.pytest_plugin)
share this module.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from emulator import FtlabError

from .outfile import OutputFile


@dataclass(frozen=True)
class Difference:
    """How an output differs from its golden file: the unified diff's lines, and how many lines
    each side has that the other lacks."""

    diff: list[str]
    removed: int
    added: int

    def summary(self) -> str:
        return f"-{self.removed} +{self.added} lines"


def read_golden(path: str, how_to_write: str) -> str:
    """The golden file's text, exactly (no newline translation); a missing or unreadable file is one
    line, a missing one saying `how_to_write` it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise FtlabError(f"{path}: No such file or directory ({how_to_write} writes it)") from None
    except OSError as err:
        raise FtlabError(f"{path}: {err.strerror or err}") from None
    return data.decode("utf-8", errors="replace")  # a byte that is not UTF-8 differs from any output


def difference(expected: str, actual: str, path: str, label: str) -> Difference | None:
    """None when `actual` is `expected` byte for byte; else the unified diff (`--- path`, `+++ label`)."""
    if actual == expected:
        return None
    old, new = expected.splitlines(keepends=True), actual.splitlines(keepends=True)
    diff = list(_terminated(difflib.unified_diff(old, new, path, label)))
    removed = sum(1 for line in diff[2:] if line.startswith("-"))
    added = sum(1 for line in diff[2:] if line.startswith("+"))
    return Difference(diff, removed, added)


def _terminated(lines: Iterator[str]) -> Iterator[str]:
    """Each diff line ends in a newline; a side whose last line has none is marked as diff(1) marks it."""
    for line in lines:
        yield line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n"


def write_golden(path: str, text: str) -> None:
    """Write the golden file whole or not at all (OutputFile: checked, then renamed into place)."""
    with OutputFile(path) as out:
        out.fh.write(text)


class Golden:
    """`--golden FILE`: the output compared with FILE; with update, FILE rewritten with it.

    Made before the command does any work, so a missing golden file (or an unwritable one, to
    update) is refused first. finish() then compares or writes; abort() leaves FILE untouched."""

    def __init__(self, path: str, update: bool, label: str = "trace"):
        self.path, self.label = path, label
        self.out = OutputFile(path) if update else None
        self.expected = None if update else read_golden(path, "--update-golden")

    def finish(self, text: str, diff_to: TextIO) -> None:
        """Update FILE with `text`, or compare: equal is silent; a difference goes to `diff_to` as a
        unified diff, then is raised as one line."""
        if self.out is not None:
            self.out.fh.write(text)
            self.out.commit()
            return
        assert self.expected is not None
        found = difference(self.expected, text, self.path, self.label)
        if found is not None:
            diff_to.writelines(found.diff)
            raise FtlabError(
                f"{self.label} differs from {self.path} ({found.summary()}, the diff on stdout; "
                "--update-golden rewrites it)"
            )

    def abort(self) -> None:
        if self.out is not None:
            self.out.abort()
