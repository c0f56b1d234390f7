"""The pytest plugin (tracers.pytest_plugin), run as a user's pytest runs it: pytester sessions with
the plugin loaded by `-p` (entry points off, so an installed copy is not loaded twice)."""

import re
import tomllib

import pytest

from tracers.cli.main import main
from transcripts import ROOT

pytest_plugins = ["pytester"]

EXAMPLE = ROOT / "examples" / "test_user_regression.py"


@pytest.fixture
def session(pytester, monkeypatch):
    """Run pytest in pytester's directory with only the ftlab plugin: (result, pytester)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(*args):
        return pytester.runpytest("-p", "tracers.pytest_plugin", "-p", "no:cacheprovider", *args)

    return run


def test_the_entry_point_names_the_plugin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"ftlab": "tracers.pytest_plugin"}


def test_ftlab_arch_makes_one_test_per_arch_and_the_marker_narrows_it(pytester, session):
    pytester.makepyfile(
        """
        import pytest

        def test_each(ftlab_arch):
            pass

        @pytest.mark.ftlab_arches("aarch64")
        def test_one(ftlab_arch):
            assert ftlab_arch == "arm64"

        @pytest.fixture
        def machine(ftlab_arch):
            return ftlab_arch

        def test_through_a_fixture(machine):
            pass
        """
    )
    result = session("--collect-only", "-q", "--strict-markers")
    ids = sorted(line.split("::")[1] for line in result.outlines if "::" in line)
    assert ids == [
        "test_each[arm64]",
        "test_each[x86_64]",
        "test_one[arm64]",
        "test_through_a_fixture[arm64]",
        "test_through_a_fixture[x86_64]",
    ]
    session("--strict-markers").assert_outcomes(passed=5)


@pytest.mark.parametrize(
    "names,why",
    [('"mips"', "unknown architecture 'mips' (known: x86_64, arm64)"), ("", "name at least one arch (x86_64, arm64)")],
)
def test_a_wrong_marker_is_one_collection_error_line(pytester, session, names, why):
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.ftlab_arches({names})
        def test_x(ftlab_arch):
            pass
        """
    )
    result = session()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"test_*.py::test_x: @pytest.mark.ftlab_arches: {why}", "*= short test summary info =*"], consecutive=True
    )


def _cli(capsys, *argv) -> str:
    capsys.readouterr()  # what the pytester sessions printed
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_golden_files_are_written_compared_and_shown_as_a_diff(pytester, session, capsys):
    pytester.makepyfile(
        test_fib="""
        def test_fib(ftlab, ftlab_arch):
            ftlab.assert_golden(ftlab.trace("funcs", "chain_a(3)", arch=ftlab_arch, filter=["chain_*"], clock="insns"))
        """
    )
    goldens = pytester.path / "goldens"
    result = session()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["goldens/test_fib-arm64.txt: no golden file (pytest --ftlab-update-goldens writes it)"]
    )
    session("--ftlab-update-goldens").assert_outcomes(passed=2)
    for arch in ("x86_64", "arm64"):  # what the command prints, byte for byte
        cli = _cli(capsys, "trace", "--arch", arch, "funcs", "chain_a(3)", "--filter", "chain_*", "--clock", "insns")
        assert (goldens / f"test_fib-{arch}.txt").read_text() == cli
    session().assert_outcomes(passed=2)

    golden = goldens / "test_fib-arm64.txt"
    golden.write_text(golden.read_text().replace("chain_b <-chain_a", "chain_b <-chain_c"))
    before = golden.stat().st_mtime_ns
    result = session()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "output differs from goldens/test_fib-arm64.txt (-1 +1 lines; pytest --ftlab-update-goldens rewrites it):",
            "--- goldens/test_fib-arm64.txt",
            "+++ output",
            "@@ *",
            "-*chain_b <-chain_c",
            "+*chain_b <-chain_a",
        ]
    )
    session("--ftlab-update-goldens").assert_outcomes(passed=2)
    assert "chain_b <-chain_a" in golden.read_text()
    unchanged = goldens / "test_fib-x86_64.txt"
    mtime = unchanged.stat().st_mtime_ns
    session("--ftlab-update-goldens").assert_outcomes(passed=2)
    assert unchanged.stat().st_mtime_ns == mtime and golden.stat().st_mtime_ns != before  # rewritten only if different


def test_the_ftlab_fixture(pytester, session):
    pytester.makepyfile(
        """
        import pytest
        from emulator import FtlabError

        def test_lab(ftlab, ftlab_arch):
            assert ftlab.lab("funcs", ftlab_arch).call("fib", 20) == 6765

        def test_command(ftlab):
            assert ftlab.command("run", "--arch", "all", "funcs", "fib(10)") == (
                "x86_64: fib(10) = 55 (0x37)\\narm64: fib(10) = 55 (0x37)\\n"
            )

        def test_errors(ftlab):
            failed = r"^`ftlab trace nosuch.o .fib\\(1\\).` failed: ftlab: error: nosuch.o: No such file"
            with pytest.raises(FtlabError, match=failed):
                ftlab.trace("nosuch.o", "fib(1)")
            with pytest.raises(FtlabError, match="argument --clock: invalid choice: 'wall'"):
                ftlab.trace("funcs", "fib(1)", arch="arm64", clock="wall")

        def test_named_goldens(ftlab):
            ftlab.assert_golden("a\\n", "first")
            ftlab.assert_golden("b\\n", "second.out")
            ftlab.assert_golden("c\\n", "first")
        """
    )
    result = session("--ftlab-update-goldens")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["goldens/first.txt: compared twice in one test: give each assert_golden a name"])
    assert (pytester.path / "goldens" / "first.txt").read_text() == "a\n"
    assert (pytester.path / "goldens" / "second.out").read_text() == "b\n"


def test_readme_example_is_the_example_file():
    """README.md shows examples/test_user_regression.py as it is (the README cannot drift from the file CI runs)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    shown = next((b for b in blocks if b.startswith(f"# {EXAMPLE.relative_to(ROOT)}")), None)
    if shown is None:
        pytest.skip("README.md has no ```python block starting with '# examples/test_user_regression.py' yet")
    assert shown == EXAMPLE.read_text()
