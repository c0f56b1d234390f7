"""Issue #11: mutated objects end in a result or a one-line FtlabError, never another exception
and never a hang. Bit flips, byte overwrites and truncations of the committed fixture objects of
both arches go through the CLI's own path (`ftlab run OBJ CALL`); a mutant that loads runs one
fixture call under a small instruction budget, which bounds every case without a wall clock.

hypothesis explores derandomized (the same examples every run); the bigger fixed-seed sweep over
every committed object is marked slow."""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import catalog
from helpers import ARCHES
from tracers.cli.main import main

BUDGET = 20_000  # instructions per call: fib(6) needs a few hundred
CALLS = {"imports": ("use_helper(2)", ["--stub", "helper", "--stub", "jiffies_like=data"])}
DEFAULT_CALL = ("fib(6)", [])


def run_cli(path: Path, name: str) -> tuple[int, str]:
    """`ftlab run` on a mutant: its exit code and stderr. Exit 2 is an internal error."""
    call, extra = CALLS.get(name, DEFAULT_CALL)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["run", str(path), call, "--budget", str(BUDGET), *extra])
    return code, err.getvalue()


def check(path: Path, name: str, data: bytes) -> None:
    path.write_bytes(data)
    code, err = run_cli(path, name)
    assert code in (0, 1), err
    assert code == 0 or (err.startswith("ftlab: error: ") and err.count("\n") == 1), err


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: 1-4 bit flips, an overwrite of 1-8 bytes (random, 0x00 or 0xff), a truncation."""
    out = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        at, n = rng.randrange(len(out)), rng.randint(1, 8)
        fill = rng.choice([lambda: rng.randrange(256), lambda: 0, lambda: 0xFF])
        out[at : at + n] = bytes(fill() for _ in range(min(n, len(out) - at)))
    else:
        del out[rng.randrange(len(out)) :]
    return bytes(out)


# -- hypothesis: each mutation kind explored on both arches (the default run: a few seconds) -----

OBJECTS = [(arch, name) for arch in ARCHES for name in ("funcs", "imports")]
FUZZ = settings(
    derandomize=True,
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _fixture(target: tuple[str, str]) -> bytes:
    arch, name = target
    return (catalog.OBJ_DIR / arch / f"{name}.o").read_bytes()


@FUZZ
@given(target=st.sampled_from(OBJECTS), flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4))
def test_bit_flips(tmp_path_factory, target, flips):
    data = bytearray(_fixture(target))
    for flip in flips:
        data[flip // 8 % len(data)] ^= 1 << flip % 8
    check(tmp_path_factory.mktemp("flip") / "m.o", target[1], bytes(data))


@FUZZ
@given(target=st.sampled_from(OBJECTS), at=st.integers(min_value=0), new=st.binary(min_size=1, max_size=8))
def test_byte_overwrites(tmp_path_factory, target, at, new):
    data = _fixture(target)
    at %= len(data)
    mutant = data[:at] + new[: len(data) - at] + data[at + len(new) :]
    check(tmp_path_factory.mktemp("overwrite") / "m.o", target[1], mutant)


@FUZZ
@given(target=st.sampled_from(OBJECTS), keep=st.integers(min_value=0))
def test_truncations(tmp_path_factory, target, keep):
    data = _fixture(target)
    check(tmp_path_factory.mktemp("truncate") / "m.o", target[1], data[: keep % len(data)])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_header_fields_that_matter(tmp_path, arch):
    """Every byte of the ELF header and of each section header set to 0x00 and to 0xff in turn:
    the fields the checks read first, where one wrong value used to reach the parser."""
    data = (catalog.OBJ_DIR / arch / "funcs.o").read_bytes()
    shoff = int.from_bytes(data[40:48], "little")
    spots = list(range(64)) + list(range(shoff, min(len(data), shoff + 64 * 12), 8))
    for at in spots:
        for byte in (0x00, 0xFF):
            check(tmp_path / "m.o", "funcs", data[:at] + bytes([byte]) + data[at + 1 :])


# -- the fixed-seed sweep: hundreds of mutants of every committed object (slow) ------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHES)
def test_mutation_sweep(tmp_path, arch):
    rng = random.Random(11)  # issue #11
    objects = sorted((catalog.OBJ_DIR / arch).glob("*.o"))
    for n in range(360):
        path = objects[n % len(objects)]
        check(tmp_path / "m.o", path.stem, mutate(path.read_bytes(), rng))
