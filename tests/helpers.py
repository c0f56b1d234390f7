"""What the tests share besides pytest fixtures (those stay in conftest.py, which tests never import):
every bundled fixture variant, and every example call of the catalog with its independent reference."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pytest

from emulator import arch as arches
from fixtures import catalog
from tracers.arch import kernel_arch
from tracers.builtin.probe import ProbeEventTracer
from tracers.cli.main import main
from tracers.core.fprobe import DESIGNS
from tracers.kernel_version import MODELLED
from tracers.lab import Lab
from tracers.output import native_text
from tracers.output.sinks import TextSink

ARCHES = list(arches.ARCHES)
# (arch, fprobe design) where the design existed: the rethook design only where the arch had rethook
FPROBE_DESIGNS = [
    pytest.param(a, d, id=f"{a}-{d}")
    for a in ARCHES
    for d in DESIGNS
    if d != "rethook" or kernel_arch(arches.get(a)).rethook.no_rethook_reason is None
]


def all_variants(without=()):
    """(arch_name, variant) for every bundled funcs variant, as pytest parameters; `without`: site
    kinds (catalog.Variant.site_kind) left out, for a test of what only entry sites give."""
    return [
        pytest.param(a, n, id=f"{a}-{n}")
        for a in ARCHES
        for n in catalog.names(a)
        if catalog.variant(a, n).site_kind not in without
    ]


@dataclass(frozen=True)
class Example:
    """One call of a catalog function: what it must return, how to read its result, what it calls."""

    func: catalog.Function
    args: tuple

    @property
    def name(self) -> str:
        return self.func.name

    @property
    def expected(self):
        return self.func.reference(*self.args)

    @property
    def calls(self) -> dict | None:
        """{function: entries} for this call, where the catalog knows them."""
        return self.func.calls(*self.args) if self.func.calls else None

    def call(self, target):
        """Run it on a Lab or a Machine, its result read as the C type the catalog gives."""
        return target.call(self.name, *self.args, ret=self.func.ret)

    def __str__(self) -> str:
        return f"{self.name}{self.args!r}"


def example(name: str, *args) -> Example:
    return Example(catalog.FUNCTIONS[name], args)


EXAMPLES = [Example(f, args) for f in catalog.FUNCTIONS.values() for args in f.examples]


def ftlab(capsys, *argv: str) -> str:
    """What an ftlab command that must succeed prints (and nothing on stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    return out


def trace_file(capsys, *argv: str, kernel: str = str(MODELLED)) -> str:
    """The kernel's trace file that `ftlab trace` or `ftlab replay` prints in text, after the
    lab's line naming the release and arch it models (checked here, and left off)."""
    first, _, rest = ftlab(capsys, *argv).partition("\n")
    assert re.fullmatch(rf"# ftlab: Linux {re.escape(kernel)} model, (x86_64|arm64)", first), first
    return rest


# the bulk text's two writers: the C formatter (where it was built at install) and Python's lines
TEXT_PATHS = [
    pytest.param(
        "c", marks=pytest.mark.skipif(native_text.LIB is None, reason="the native text formatter was not built")
    ),
    "python",
]


def probe_texts(arch, specs, calls, path, monkeypatch):
    """The trace file of probe events on the lab's path for them (its bulk text written by `path`)
    and on the Python path (ring=False), and the first's tracer."""
    texts, tracer = [], None
    for ring in (None, False):
        out = io.StringIO()
        lab = Lab.open("funcs", arch)
        with monkeypatch.context() as patch:
            if path == "python":
                patch.setattr(native_text, "LIB", None)
            with ProbeEventTracer(lab, TextSink(out, lab.machine.symbols), specs(lab), ring=ring) as traced:
                for call in calls:
                    lab.call(*call)
        texts.append(out.getvalue())
        tracer = tracer or traced
    return texts, tracer
