"""The README's examples run as written: its Python API example, and every `$ ftlab` transcript.

A transcript shows a command's output, maybe abridged. Each shown line must be one the command
prints, in the order it prints them, with these elisions: a line that is only `...` (or `…`) stands
for any number of lines, and `...` inside a line for any text there. A JSON record shown wrapped
(continuation lines indented) is compared as the one line it is. The full outputs of the README's
commands are golden transcripts too (tests/golden/), where they can be copied from."""

import json
import re
import shlex

import pytest

from transcripts import PROMPT, ROOT, cases, commands, run, workdir

README = ROOT / "README.md"
ELLIPSIS = re.compile(r"\.\.\.|…")


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def transcripts(text: str) -> list[tuple[str, list[str]]]:
    """(command line, the output lines shown for it) for every `$ ftlab` line in a ``` block."""
    shown, fence, current = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            fence, current = (line[3:] if fence is None else None), None  # opens (with its info) or closes
        elif fence == "" and line.startswith(PROMPT):
            current = []
            shown.append((line[len(PROMPT) :], current))
        elif current is not None:
            if current and current[-1].startswith("{") and line.startswith(" "):  # a wrapped JSON record
                current[-1] = current[-1].rstrip() + " " + line.strip()
            else:
                current.append(line)
    return shown


def _matches(shown: str, line: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in ELLIPSIS.split(shown.rstrip()))
    return re.fullmatch(pattern, line.rstrip()) is not None


def unmatched(shown: list[str], printed: list[str]) -> str | None:
    """The first shown line not printed (after the one before it), or None."""
    at = 0
    for line in shown:
        if ELLIPSIS.fullmatch(line.strip()):
            continue
        at = next((i + 1 for i in range(at, len(printed)) if _matches(line, printed[i])), None)
        if at is None:
            return line
    return None


README_TRANSCRIPTS = transcripts(README.read_text())


def test_the_readme_has_transcripts():
    assert len(README_TRANSCRIPTS) >= 10 and all(shown for _, shown in README_TRANSCRIPTS)


@pytest.mark.parametrize("command,shown", README_TRANSCRIPTS, ids=[c[:60] for c, _ in README_TRANSCRIPTS])
def test_readme_transcript(command, shown):
    with workdir():
        out, err, _ = run(shlex.split(command))
    printed = (out + err).splitlines()
    missing = unmatched(shown, printed)
    assert missing is None, (
        f"README shows {missing!r}, not printed (in that order) by\n$ ftlab {command}\n" + "\n".join(printed)
    )


def test_every_readme_command_is_a_golden_case():
    golden = {tuple(shlex.split(line)) for path in cases() for line in commands(path.read_text())}
    assert [c for c, _ in README_TRANSCRIPTS if tuple(shlex.split(c)) not in golden] == []


def test_the_comparison_can_fail():
    printed = ["# tracer: function", "a 1", "b 2", "c 3"]
    assert unmatched(["# tracer: function", "...", "c 3"], printed) is None
    assert unmatched(["a ...", "c 3"], printed) is None
    assert unmatched(["c 3", "a 1"], printed) == "a 1"  # out of order
    assert unmatched(["b 3"], printed) == "b 3"
    assert unmatched(["a 1..."], ["a 1 and more"]) is None and unmatched(["a 1..."], ["a 2"]) == "a 1..."
    assert transcripts('```\n$ ftlab x\n{"a": 1,\n "b": [...]}\n```\n') == [("x", ['{"a": 1, "b": [...]}'])]


def test_wrapped_json_is_a_record_the_tool_prints():
    """A ```json block shows a record wrapped for reading: it must be one a transcript above prints."""
    text = README.read_text()
    printed = [  # JSON lines (a Chrome document's lines are parts of one document, not records)
        json.loads(line)
        for _, lines in transcripts(text)
        for line in lines
        if line.startswith("{") and line.rstrip().endswith("}")
    ]
    blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        assert json.loads(block) in printed
