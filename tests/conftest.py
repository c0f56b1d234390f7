import pytest

from fixtures import catalog
from helpers import ARCHES
from tracers import Lab


@pytest.fixture(params=ARCHES)
def arch(request):
    return request.param


@pytest.fixture
def lab(arch):
    return Lab.open(catalog.DEFAULT, arch)
