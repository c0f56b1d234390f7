"""The architectures the lab emulates, each described in one package (like the kernel's arch/)."""

from ..errors import FtlabError
from .arm64 import CPU as ARM64
from .base import Arch
from .x86_64 import CPU as X86_64

ARCHES: dict[str, Arch] = {a.name: a for a in (X86_64, ARM64)}
ALIASES = {"x86": "x86_64", "amd64": "x86_64", "aarch64": "arm64"}


def get(name: str) -> Arch:
    arch = ARCHES.get(ALIASES.get(name, name))
    if arch is None:
        raise FtlabError(f"unknown architecture '{name}' (known: {', '.join(ARCHES)})")
    return arch


def by_elf_machine(machine: str) -> Arch | None:
    return next((a for a in ARCHES.values() if a.elf_machine == machine), None)
