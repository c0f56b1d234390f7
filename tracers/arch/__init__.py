"""The kernel's arch/ code, one package per architecture."""

from emulator.arch import Arch

from .arm64 import KERNEL as ARM64
from .base import KernelArch
from .x86_64 import KERNEL as X86_64

KERNEL_ARCHES: dict[str, KernelArch] = {k.name: k for k in (X86_64, ARM64)}


def kernel_arch(cpu: Arch) -> KernelArch:
    """The kernel arch code for a CPU description."""
    return KERNEL_ARCHES[cpu.name]
