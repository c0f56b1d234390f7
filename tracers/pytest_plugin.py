"""ftlab's pytest plugin: regression tests on patched binaries, kept as golden files.

pytest loads it through the `ftlab` entry point of the pytest11 group once ftlab is installed
(`-p tracers.pytest_plugin` loads it by hand). A test file of a user's:

    def test_fib_graph(ftlab, ftlab_arch):               # one test per arch
        text = ftlab.trace("funcs", "fib(4)", arch=ftlab_arch, tracer="function_graph", funcgraph_retval=True)
        ftlab.assert_golden(text)                       # goldens/test_fib_graph-arm64.txt beside the file

The fixtures:
  ftlab       lab(obj, arch) -> a tracers.Lab; command(*argv) -> what `ftlab ARGV` prints;
              trace(obj, calls, arch=, tracer=, **options) -> what `ftlab trace` prints, each option
              a flag (filter=["fib"] is --filter fib, funcgraph_retval=True --funcgraph-retval);
              assert_golden(text, name=None): text equals goldens/NAME.txt beside the test file,
              NAME the test's name by default; a difference fails with a unified diff.
  ftlab_arch  the arch name, one test for each arch the lab emulates; `@pytest.mark.ftlab_arches(
              "arm64")` narrows it.
`pytest --ftlab-update-goldens` writes the golden files instead of comparing (review the diff).

PYTEST_DONT_REWRITE: the plugin asserts nothing itself, and a `-p` run finds it imported already.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from emulator import FtlabError
from emulator import arch as arches

from .cli.main import main
from .lab import Lab
from .output.golden import difference, read_golden, write_golden

GOLDENS = "goldens"  # the golden files' folder, beside each test file
UPDATE = "--ftlab-update-goldens"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("ftlab").addoption(
        UPDATE,
        action="store_true",
        help=f"write ftlab.assert_golden's files ({GOLDENS}/NAME.txt beside each test file) instead of comparing",
    )


def pytest_configure(config: pytest.Config) -> None:
    known = ", ".join(arches.ARCHES)
    config.addinivalue_line(
        "markers",
        f"ftlab_arches(*names): run a test using ftlab_arch on these arches only ({known})",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test for each arch where the test (or a fixture it uses) asks for ftlab_arch."""
    if "ftlab_arch" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("ftlab_arches")
    names, wrong = list(arches.ARCHES), None
    if marker is not None:
        try:
            names = [arches.get(name).name for name in marker.args]
        except FtlabError as err:
            wrong = str(err)
        if not names:
            wrong = f"name at least one arch ({', '.join(arches.ARCHES)})"
    if wrong is not None:
        pytest.fail(f"{metafunc.definition.nodeid}: @pytest.mark.ftlab_arches: {wrong}", pytrace=False)
    metafunc.parametrize("ftlab_arch", names, indirect=True, ids=names)


@pytest.fixture
def ftlab_arch(request: pytest.FixtureRequest) -> str:
    """The arch this test runs on (x86_64, arm64): one test for each, or those @pytest.mark.ftlab_arches names."""
    return request.param


@pytest.fixture
def ftlab(request: pytest.FixtureRequest) -> Ftlab:
    """Labs, ftlab commands and golden files for one test."""
    return Ftlab(request)


class Ftlab:
    """The `ftlab` fixture: what a test needs to run the lab and compare its output with a golden."""

    def __init__(self, request: pytest.FixtureRequest):
        self.goldens = request.path.parent / GOLDENS
        self.update = bool(request.config.getoption(UPDATE))
        self.root = request.config.rootpath
        self.test_name = re.sub(r"[^\w-]+", "-", request.node.name).strip("-")  # test_x[arm64] -> test_x-arm64
        self.compared: set[Path] = set()

    def lab(self, obj: str, arch: str | None = None, **options) -> Lab:
        """A lab on OBJ (a bundled fixture name or an object's path) for arch: tracers.Lab.open."""
        return Lab.open(obj, arch, **options)

    def command(self, *argv: str) -> str:
        """What `ftlab ARGV` prints on stdout; a command that fails raises FtlabError with its error line."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exit_:  # argparse: a usage error
                code = exit_.code
        if code != 0:
            why = err.getvalue().strip().splitlines() or [f"exit status {code}"]
            raise FtlabError(f"`ftlab {shlex.join(argv)}` failed: {why[-1]}")
        return out.getvalue()

    def trace(self, obj: str, calls: str, arch: str | None = None, tracer: str | None = None, **options) -> str:
        """What `ftlab trace [--arch ARCH] OBJ CALLS [--tracer TRACER] [OPTIONS]` prints. Each option
        is the command's flag: a name's _ is -, True gives the flag alone, a list repeats it, None
        and False leave it out (format="json", filter=["chain_*"], clock="insns", verify=True)."""
        argv = ["trace", obj, calls, *_flags({"arch": arch, "tracer": tracer, **options})]
        return self.command(*argv)

    def assert_golden(self, text: str, name: str | None = None) -> None:
        """text is goldens/NAME.txt beside the test file, byte for byte (NAME: the test's name by
        default; a name with a suffix is the file's name). With --ftlab-update-goldens the file is
        written instead, when it differs."""
        path = self.goldens / (name if name is not None and Path(name).suffix else f"{name or self.test_name}.txt")
        if path in self.compared:
            pytest.fail(
                f"{self._shown(path)}: compared twice in one test: give each assert_golden a name", pytrace=False
            )
        self.compared.add(path)
        shown = self._shown(path)
        if self.update:
            if not path.exists() or read_golden(str(path), UPDATE) != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_golden(str(path), text)
            return
        if not path.exists():
            pytest.fail(f"{shown}: no golden file (pytest {UPDATE} writes it)", pytrace=False)
        found = difference(read_golden(str(path), UPDATE), text, shown, "output")
        if found is not None:
            pytest.fail(
                f"output differs from {shown} ({found.summary()}; pytest {UPDATE} rewrites it):\n{''.join(found.diff)}",
                pytrace=False,
            )

    def _shown(self, path: Path) -> str:
        """The golden file's path as a report shows it: from the root of the test run where it is inside."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


def _flags(options: dict) -> list[str]:
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [part for item in value for part in (flag, str(item))]
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv
