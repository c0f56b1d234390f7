"""Several objects in one machine (`--load DEP`, `Lab(loads=[...])`): loaded in order as insmod
loads a module's dependencies, globals resolved across them, locals never, a global defined twice
refused, and every object's patch sites initialised."""

from __future__ import annotations

import pytest

from cc import build
from emulator import FtlabError
from tracers import Lab
from tracers.cli.main import main

DEPENDENCY = """
int shared_counter;
__attribute__((noinline)) static long scale(long x) { return x * 3; }
__attribute__((noinline)) static long only_static(long x) { return x - 1; }
long helper_add(long a, long b) { shared_counter++; return scale(a) + only_static(b) + 1; }
"""
USER = """
extern int shared_counter;
extern long helper_add(long a, long b);
__attribute__((noinline)) static long scale(long x) { return x * 5; }
long use_dep(long x) { return helper_add(x, scale(x)) + shared_counter; }
"""
CLASH = "long helper_add(long a, long b) { return a - b; }"
WEAK = "__attribute__((weak)) long helper_add(long a, long b) { return a - b; }"
STATIC_USER = "extern long only_static(long x); long use_static(long x) { return only_static(x); }"


def use_dep(x: int, calls: int) -> int:
    """The reference: the calls-th call of use_dep(x)."""
    return (3 * x) + (5 * x - 1) + 1 + calls


@pytest.fixture
def objects(tmp_path, arch):
    return {name: str(build(tmp_path, arch, source, name)) for name, source in (("dep", DEPENDENCY), ("user", USER))}


def test_symbols_resolve_across_objects(objects):
    lab = Lab.open(objects["user"], loads=[objects["dep"]])
    assert [lab.call("use_dep", x) for x in (2, 7, -4)] == [use_dep(2, 1), use_dep(7, 2), use_dep(-4, 3)]
    assert lab.machine.u64(lab.machine.symbols.get("shared_counter").addr) & 0xFFFFFFFF == 3
    # each object's static scale() is its own: helper_add used dep's (x * 3), use_dep its own (x * 5)
    scales = [s for s in lab.machine.symbols.functions() if s.name == "scale"]
    assert len(scales) == 2 and scales[0].addr != scales[1].addr


def test_every_object_has_its_patch_sites_initialised(objects):
    lab = Lab.open(objects["user"], loads=[objects["dep"]])
    assert {site.func.name for site in lab.sites} >= {"helper_add", "use_dep"}
    for site in lab.sites:
        assert lab.machine.read(site.addr, len(site.disabled)) == site.disabled


def test_trace_shows_the_dependency_functions(objects, capsys):
    assert main(["trace", "--load", objects["dep"], objects["user"], "use_dep(2)"]) == 0
    out = capsys.readouterr().out
    assert " use_dep <-" in out and " helper_add <-use_dep" in out
    assert f"# use_dep(2) = {use_dep(2, 1)}" in out


def test_without_the_dependency_its_symbols_are_undefined(objects):
    with pytest.raises(FtlabError, match=r"user\.o: 2 undefined symbols: "):
        Lab.open(objects["user"])


def test_a_global_defined_twice_is_refused(tmp_path, arch, objects):
    clash = str(build(tmp_path, arch, CLASH, "clash"))
    message = rf"^{clash}: global symbol 'helper_add' \(\.text\) is already defined by {objects['dep']}$"
    with pytest.raises(FtlabError, match=message):
        Lab.open(objects["user"], loads=[objects["dep"], clash])
    weak = str(build(tmp_path, arch, WEAK, "weak"))  # a weak definition gives way
    lab = Lab.open(objects["user"], loads=[objects["dep"], weak])
    assert lab.call("use_dep", 2) == use_dep(2, 1)


def test_a_static_symbol_is_not_visible_to_other_objects(tmp_path, arch, objects):
    user = str(build(tmp_path, arch, STATIC_USER, "static_user"))
    with pytest.raises(FtlabError, match=r"undefined symbol 'only_static'"):
        Lab.open(user, loads=[objects["dep"]])


def test_an_object_for_the_other_arch_is_refused(tmp_path, arch, objects):
    other = "arm64" if arch == "x86_64" else "x86_64"
    dep = str(build(tmp_path / "..", other, DEPENDENCY, f"dep-{other}"))
    with pytest.raises(FtlabError, match=rf"built for {other}, not {arch}$"):
        Lab.open(objects["user"], loads=[dep])
