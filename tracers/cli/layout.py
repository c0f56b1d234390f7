"""`ftlab layout NAME`: a picture of one of the structures the mechanisms share, both arches side
by side, as text or SVG (tracers/views)."""

from __future__ import annotations

import argparse

from emulator import FtlabError

from ..kernel_version import MODELLED
from ..output.outfile import OutputFile
from ..views import layout_svg, layout_text
from ..views.structures import NAMES, arches_of, check_name

RENDERERS = {"text": layout_text.render, "svg": layout_svg.render}
DEFAULT_NR_ARGS = 2


def _nr_args(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a decimal number of arguments") from None


def add_parser(sub, kernel_type) -> None:
    p = sub.add_parser("layout", help="a picture of a shared structure: offsets, fields, which mechanisms fill them")
    p.add_argument("name", metavar="NAME", nargs="?", help=f"one of: {', '.join(NAMES)}")
    p.add_argument("--list", action="store_true", help="list the structures and stop")
    p.add_argument("--arch", default="all", help="x86_64, arm64, or all (the default: side by side)")
    p.add_argument(
        "--kernel",
        type=kernel_type,
        default=MODELLED,
        metavar="VERSION",
        help=f"the kernel release whose layouts to draw (default {MODELLED})",
    )
    p.add_argument("--format", choices=sorted(RENDERERS), default="text")
    p.add_argument(
        "--nr-args",
        type=_nr_args,
        metavar="N",
        help=f"bpf_tramp_frame: the traced function's arguments (default {DEFAULT_NR_ARGS})",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the picture here instead of stdout")
    p.set_defaults(func=cmd_layout)


def cmd_layout(args, out) -> None:
    if args.list:
        out.write("".join(f"{name}\n" for name in NAMES))
        return
    check_name(args.name)
    if args.nr_args is not None and args.name != "bpf_tramp_frame":
        raise FtlabError(f"layout {args.name}: --nr-args is for bpf_tramp_frame only")
    nr_args = DEFAULT_NR_ARGS if args.nr_args is None else args.nr_args
    arches = arches_of(args.arch)
    render = RENDERERS[args.format]
    if args.output is None:
        out.write(render(args.name, arches, args.kernel, nr_args))
        return
    with OutputFile(args.output) as output:  # checked before any work; in place when complete
        output.fh.write(render(args.name, arches, args.kernel, nr_args))
