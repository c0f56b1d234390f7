"""Golden transcripts of the ftlab command line, kept as uftrace's runtest keeps its expected output:
tests/golden/NAME.txt holds command lines and, verbatim, what each printed, and test_golden.py
compares the bytes.

    $ ftlab run --arch x86_64 funcs 'divmod(-47, 5)' --ret pair
    divmod(-47, 5) = (-9, -2)
    $ ftlab run --arch arm64 funcs 'nosuch(1)'
    [stderr]
    ftlab: error: no symbol 'nosuch' in the loaded objects
    [exit 1]

After each `$ ftlab ARGS` line (ARGS in shell quoting) comes the command's stdout, then `[stderr]`
and its stderr if it wrote any, then `[exit N]` if its status is not 0. The commands of a file run
in order, in-process, in one fresh directory whose fixtures/ is the repository's, so relative paths
such as fixtures/obj/x86_64/imports.o work and a file `record` writes is there for `replay`.

After a deliberate change of the output, regenerate and review the diff:

    make golden                                  # every case
    python -m tests.transcripts NAME ...         # some (from the repository's root)

A new case is a new file holding only its `$ ftlab` lines; regenerating fills in the output.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import sys
import tempfile
from pathlib import Path

from tracers.cli.main import main as ftlab

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
PROMPT = "$ ftlab "


def commands(text: str) -> list[str]:
    """The command lines of a transcript, without the prompt."""
    return [line[len(PROMPT) :] for line in text.splitlines() if line.startswith(PROMPT)]


def run(argv: list[str]) -> tuple[str, str, int]:
    """ftlab ARGV in this process: (stdout, stderr, exit status)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _columns(80):
        try:
            code = ftlab(argv)
        except SystemExit as exit_:  # argparse: usage errors and --help
            code = exit_.code
    return out.getvalue(), err.getvalue(), code


@contextlib.contextmanager
def _columns(width: int):
    """argparse wraps its usage text to the terminal's width: the same width on every machine."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def render(command: str, out: str, err: str, code: int) -> str:
    text = PROMPT + command + "\n" + _block(out)
    if err:
        text += "[stderr]\n" + _block(err)
    if code:
        text += f"[exit {code}]\n"
    return text


def _block(output: str) -> str:
    if any(line.startswith(PROMPT) for line in output.splitlines()):
        raise ValueError(f"output line starts with {PROMPT!r}: a transcript could not tell it from a command")
    return output if not output or output.endswith("\n") else output + "\n[no newline at the end]\n"


@contextlib.contextmanager
def workdir():
    """A fresh working directory in which fixtures/ is the repository's."""
    with tempfile.TemporaryDirectory(prefix="ftlab-golden-") as tmp:
        (Path(tmp) / "fixtures").symlink_to(ROOT / "fixtures")
        with contextlib.chdir(tmp):
            yield Path(tmp)


def transcript(lines: list[str]) -> str:
    """Run the command lines in order, in one fresh directory: the transcript they make."""
    with workdir():
        return "".join(render(line, *run(shlex.split(line))) for line in lines)


def cases() -> list[Path]:
    return sorted(GOLDEN.glob("*.txt"))


def regenerate(names: list[str]) -> int:
    paths = [GOLDEN / f"{n.removesuffix('.txt')}.txt" for n in names] if names else cases()
    for path in paths:
        old = path.read_text()
        if not commands(old):
            raise SystemExit(f"{path}: no '{PROMPT.strip()}' line")
        new = transcript(commands(old))
        if new != old:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(regenerate(sys.argv[1:]))
