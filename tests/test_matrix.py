"""The compiler matrix (catalog.MATRIX: gcc and clang x -O0..-Os x the kernel's site flags, both
arches): every object built as the catalog says, its patch sites the ones its own table or
relocations list, and every catalog function's results equal the Python references untraced,
under the function tracer and under function_graph, every snapshot equal to the truth."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

import helpers
from emulator import FtlabError
from emulator import arch as arches
from emulator.machine import decode_return
from fixtures import catalog
from helpers import example
from test_function_graph import check_balanced
from tracers import FunctionTracer, Lab
from tracers.builtin.function_graph import FunctionGraphTracer
from tracers.lab import Target
from tracers.output.sinks import ListSink

OBJECTS = [pytest.param(m, id=f"{m.arch}-{m.name}") for m in catalog.MATRIX]
# Every catalog example, but fib(20) (21,891 calls: 2-4 s per object traced, 5-7 s graphed, which the
# bundled variants' sweeps spend) is fib(10) here (177 calls, the same recursion): the whole matrix in
# well under a minute.
EXAMPLES = [example("fib", 10) if (ex.name, ex.args) == ("fib", (20,)) else ex for ex in helpers.EXAMPLES]


def rotating_levels() -> list:
    """One object per (arch, compiler, site flags), the n-th of them at optimisation level n mod 5."""
    rows = list(dict.fromkeys((m.arch, m.compiler, m.sites) for m in catalog.MATRIX))
    level = {row: catalog.OPTS[n % len(catalog.OPTS)] for n, row in enumerate(rows)}
    return [p for p, m in zip(OBJECTS, catalog.MATRIX, strict=True) if m.opt == level[m.arch, m.compiler, m.sites]]


# `ftlab check` (every mechanism, a kprobe on every instruction) on 13 objects: each compiler and
# site flags once, every optimisation level among them
CHECKED = rotating_levels()

SITE_TABLES = ("__mcount_loc", "__patchable_function_entries")
SITE_CALLS = ("__fentry__", "mcount", "_mcount")


def open_lab(obj: catalog.MatrixObject) -> Lab:
    return Lab(Target(obj.path, arches.get(obj.arch)))


def listed_sites(path: Path) -> int:
    """How many patch sites the object lists itself, read with pyelftools: the relocations of its
    site tables (every section of that name: clang writes one per function), else, without a table,
    its calls to __fentry__ / mcount / _mcount, as objtool and recordmcount find them."""
    table = calls = 0
    with path.open("rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection):
                continue
            symtab = elf.get_section(sec["sh_link"])
            for rel in sec.iter_relocations():
                if elf.get_section(sec["sh_info"]).name in SITE_TABLES:
                    table += 1
                elif symtab.get_symbol(rel["r_info_sym"]).name in SITE_CALLS:
                    calls += 1
    return table or calls


def test_the_catalog_lists_every_matrix_object():
    on_disk = sorted(p.relative_to(catalog.OBJ_DIR) for p in catalog.OBJ_DIR.glob("*/matrix/*.o"))
    assert on_disk == sorted(m.path.relative_to(catalog.OBJ_DIR) for m in catalog.MATRIX)
    assert len(catalog.MATRIX) == 65 and {m.opt for m in catalog.MATRIX} == set(catalog.OPTS)


@pytest.mark.parametrize("arch_name", helpers.ARCHES)
def test_calls_are_checked_against_the_c_prototypes(arch_name):
    """A matrix object is funcs.c: a call passes as many arguments as its prototype says."""
    obj = next(m for m in catalog.MATRIX if m.arch == arch_name)
    with pytest.raises(FtlabError, match=r"^fib\(\) takes 1 argument \(long n\), got 2 .*fixtures/src/funcs\.c\)$"):
        open_lab(obj).call("fib", 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("obj", OBJECTS)
def test_catalog_command_rebuilds_the_committed_object(obj, tmp_path):
    """The catalog's command line (the matrix block of build.sh's) gives the committed bytes."""
    argv = shlex.split(obj.command)
    if shutil.which(argv[0]) is None:
        pytest.skip(f"needs {argv[0]}")
    fixtures = catalog.OBJ_DIR.parent
    subprocess.run([*argv, "-c", "src/funcs.c", "-o", str(tmp_path / "out.o")], cwd=fixtures, check=True)
    assert (tmp_path / "out.o").read_bytes() == obj.path.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("obj", OBJECTS)
def test_sites_are_the_ones_the_object_lists(obj):
    lab = open_lab(obj)
    assert len(lab.sites) == listed_sites(obj.path) == len(catalog.FUNCTIONS)
    assert sorted(s.func.name for s in lab.sites) == sorted(catalog.FUNCTIONS)


def verified(events) -> bool:
    """Every event carries a snapshot check, and every captured field equals the truth."""
    return all(ev.verification is not None and ev.verification.checks and ev.mismatch == [] for ev in events)


@pytest.mark.slow
@pytest.mark.parametrize("obj", OBJECTS)
def test_results_untraced_and_under_the_function_tracer(obj):
    lab = open_lab(obj)
    symbols = lab.machine.symbols
    for ex in EXAMPLES:
        assert ex.call(lab) == ex.expected, ex
        sink = ListSink()
        with FunctionTracer(lab, sink, verify=True):
            assert ex.call(lab) == ex.expected, ex
        assert verified(sink.events), ex
        assert Counter(symbols.lookup(ev.ip)[0].name for ev in sink.events) == Counter(ex.calls), ex
    assert not any(s.on for s in lab.sites)


@pytest.mark.slow
@pytest.mark.parametrize("obj", OBJECTS)
def test_function_graph_is_balanced_with_true_return_values(obj):
    lab = open_lab(obj)
    m = lab.machine
    for ex in EXAMPLES:
        sink = ListSink()
        with FunctionGraphTracer(lab, sink, verify=True):
            assert ex.call(lab) == ex.expected, ex
        assert verified(sink.events), ex
        pairs = check_balanced(m, sink.events)
        assert Counter(m.symbols.lookup(entry.ip)[0].name for entry, _ in pairs) == Counter(ex.calls), ex
        for entry, exit_ in pairs:
            callee = catalog.FUNCTIONS[m.symbols.lookup(entry.ip)[0].name]
            if entry.depth == 0:
                want = ex.expected
            elif m.arch.arg_regs[0] in entry.missing:  # arm64 -pg: argument 1 is gone at the site
                continue
            else:  # the nested callees (chain_b/c, fib, tail_b) take one long
                want = callee.reference(decode_return("i64", entry.args[0]))
            assert decode_return(callee.ret, exit_.retval, exit_.regs[m.arch.ret_regs[1]]) == want, (ex, callee.name)
    assert not any(s.on for s in lab.sites)


def call_text(ex: helpers.Example) -> str:
    """The example in the CLI's CALL syntax (tracers.call_syntax): bytes as Python literals."""
    return f"{ex.name}({', '.join(map(repr, ex.args))}):{ex.func.ret}"


@pytest.mark.slow
@pytest.mark.parametrize("obj", CHECKED)
def test_matrix_passes_ftlab_check(obj):
    conformance = pytest.importorskip("tracers.conformance")
    calls = [call_text(ex) for ex in EXAMPLES]
    report = conformance.check_object(Target(obj.path, arches.get(obj.arch)), calls=calls)
    assert report.ok, "\n".join(report.failures)
    assert {row.function for row in report.rows} == set(catalog.FUNCTIONS)
    assert not [row for row in report.rows if row.status == "FAIL"]
