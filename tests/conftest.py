import pytest

from emulator import arch as arches
from fixtures import catalog
from tracers import Lab

ARCHES = list(arches.ARCHES)


@pytest.fixture(params=ARCHES)
def arch(request):
    return request.param


@pytest.fixture
def lab(arch):
    return Lab.open(catalog.DEFAULT, arch)


def all_variants():
    return [pytest.param(a, n, id=f"{a}-{n}") for a in ARCHES for n in catalog.names(a)]


def examples():
    return [pytest.param(f, args, id=f"{f.name}{args!r}"[:60])
            for f in catalog.FUNCTIONS.values() for args in f.examples]
