"""Small objects compiled for a test, with the kernel's flags (as fixtures/build.sh builds the
committed ones): for loader behaviour no committed fixture shows. Skips without the compiler."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
KERNEL_FLAGS = {
    "x86_64": "-O2 -mno-sse -mno-mmx -mno-sse2 -mno-red-zone -fno-pic -mcmodel=kernel -ffreestanding "
    "-fno-stack-protector -fno-asynchronous-unwind-tables -fno-omit-frame-pointer",
    "arm64": "-O2 -fno-PIE -ffreestanding -fno-stack-protector -mgeneral-regs-only -fno-asynchronous-unwind-tables "
    "-fno-unwind-tables -fno-omit-frame-pointer -mbranch-protection=none",
}
SITE_FLAGS = {"x86_64": "-pg -mfentry -mrecord-mcount", "arm64": "-fpatchable-function-entry=2"}


def build(tmp_path: Path, arch: str, source: str, name: str = "t", flags: str = "", sites: bool = True) -> Path:
    """tmp_path/<name>.o compiled from C `source` for `arch` with the kernel's flags, then `flags`."""
    compiler = shutil.which(COMPILERS[arch])
    if compiler is None:
        pytest.skip(f"needs {COMPILERS[arch]}")
    (tmp_path / f"{name}.c").write_text(source)
    line = f"{KERNEL_FLAGS[arch]} {SITE_FLAGS[arch] if sites else ''} {flags}".split()
    subprocess.run([compiler, *line, "-c", f"{name}.c", "-o", f"{name}.o"], cwd=tmp_path, check=True)
    return tmp_path / f"{name}.o"
