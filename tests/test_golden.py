"""The command line's output, verbatim: each golden transcript in tests/golden/ reproduces byte for
byte (the format, and `make golden` to regenerate after a deliberate change: transcripts.py)."""

import difflib
import subprocess
import sys

import pytest

from transcripts import ROOT, cases, commands, render, run, transcript, workdir


@pytest.mark.parametrize("path", cases(), ids=lambda p: p.stem)
def test_golden_transcript(path):
    expected = path.read_text()
    got = transcript(commands(expected))
    diff = difflib.unified_diff(
        expected.splitlines(True), got.splitlines(True), f"{path.name} (golden)", f"{path.name} (now)"
    )
    assert got == expected, "output changed; if deliberately, `make golden` and review:\n" + "".join(diff)


def test_the_goldens_cover_every_command():
    covered = {line.split()[0] for path in cases() for line in commands(path.read_text())}
    assert covered == {
        *("run", "sites", "trace", "record", "replay", "regs", "compare", "check", "bpf", "demo", "step", "report"),
        "layout",
    }


def test_render_keeps_streams_and_status_apart():
    assert render("run x", "out\n", "", 0) == "$ ftlab run x\nout\n"
    assert render("run x", "", "ftlab: error: e\n", 1) == "$ ftlab run x\n[stderr]\nftlab: error: e\n[exit 1]\n"
    assert render("run x", "partial", "", 0) == "$ ftlab run x\npartial\n[no newline at the end]\n"
    with pytest.raises(ValueError, match="could not tell it from a command"):
        render("run x", "$ ftlab run y\n", "", 0)


def test_demo_shows_both_arches_with_every_captured_field_equal():
    with workdir():
        out, err, code = run(["demo"])
    assert (err, code) == ("", 0)
    checks = [line for line in out.splitlines() if line.startswith("    ") and " saved 0x" in line]
    assert [line for line in out.splitlines() if line.endswith("(12 patch sites)")] == [
        "x86_64: fixtures/obj/x86_64/funcs.o (12 patch sites)",
        "arm64: fixtures/obj/arm64/funcs.o (12 patch sites)",
    ]
    assert len(checks) == 10 + 13 and all(line.split()[5] == "equal" for line in checks)
    assert out.count("# result: 129\n") == 2 and out.count("    arguments: [1, 2, 3, 4, 5, 6") == 2


def test_the_runtime_never_imports_the_test_oracle():
    """fixtures/catalog.py is the tests' oracle: the lab finds objects by file and takes return kinds
    from its caller."""
    code = (
        "import sys; from tracers.cli.main import main; from tracers import Lab; "
        "assert Lab.open('funcs', 'arm64').call('divmod', -47, 5, ret='pair') == (-9, -2); "
        "main(['run', '--arch', 'all', 'funcs', 'fib(3)']); print('fixtures.catalog' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout == "x86_64: fib(3) = 2\narm64: fib(3) = 2\nFalse\n"
