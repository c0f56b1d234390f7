"""--trampoline NAME=FILE: a user's .S in place of the lab's trampoline of that kernel name.

The names a user may replace, per arch and kernel release, are KernelArch.trampoline_sources; Lab
(trampolines=...) hands them to KernelArch.replacing. The contract each must meet is
docs/trampolines.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emulator import FtlabError


def parse_trampoline(text: str) -> tuple[str, Path]:
    """One NAME=FILE, as --trampoline takes it."""
    name, eq, path = text.partition("=")
    if not eq or not name.strip() or not path.strip():
        raise FtlabError(f"'{text}' is not NAME=FILE.S (e.g. ftrace_caller=my_ftrace_caller.S)")
    return name.strip(), Path(path.strip())


def trampolines(specs) -> dict[str, Path] | None:
    """Several NAME=FILE pairs (parsed) as Lab's `trampolines`; a name given twice is an error."""
    out: dict[str, Path] = {}
    for name, path in specs or ():
        if name in out:
            raise FtlabError(f"--trampoline {name} is given twice ({out[name]}, {path})")
        out[name] = path
    return out or None


def _option(text: str) -> tuple[str, Path]:
    try:
        return parse_trampoline(text)
    except FtlabError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_option(p: argparse.ArgumentParser) -> None:
    """--trampoline on a command; its value is trampolines(args.trampoline)."""
    p.add_argument(
        "--trampoline",
        action="append",
        type=_option,
        default=[],
        metavar="NAME=FILE.S",
        help="assemble FILE.S in place of the lab's .S that defines trampoline NAME (ftrace_caller, "
        "return_to_handler, ...; docs/trampolines.md); repeatable",
    )
