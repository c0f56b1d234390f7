import pytest

from fixtures import catalog
from tracers import Lab

from helpers import ARCHES


@pytest.fixture(params=ARCHES)
def arch(request):
    return request.param


@pytest.fixture
def lab(arch):
    return Lab.open(catalog.DEFAULT, arch)
