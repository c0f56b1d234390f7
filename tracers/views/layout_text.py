"""`ftlab layout NAME`: a structure's pictures as text, the arches side by side, then what each
mechanism is and what it stores where it stores a value of its own."""

from __future__ import annotations

from ..kernel_version import KernelVersion
from .structures import MARKS, Picture, picture, shared_struct

GUTTER = "    "


def rows(p: Picture) -> list[str]:
    """One arch's column: a heading, then a row per field (and per uncovered span) in offset order;
    a structure with no guest layout keeps its fields' order, with no offsets."""
    gap = f"({p.gap})"
    width = max([len(f.name) for f in p.fields] + [len(gap) for _ in p.gaps()])
    keys = " ".join(m.key for m in p.mechanisms)
    out = [f"{p.arch}, {p.extent()}", f"{'offset':>6} {'size':>4}  {'field':<{width}}  {keys}"]
    for offset, size, f in p.spans():
        text = (
            gap
            if f is None
            else f"{f.name:<{width}}  " + " ".join(p.mark(f, m).ljust(len(m.key)) for m in p.mechanisms)
        )
        out.append(f"{'-' if offset is None else offset:>6} {'-' if size is None else size:>4}  {text}".rstrip())
    return out


def details(p: Picture) -> list[str]:
    """The mechanisms, what they store of their own, and the picture's notes."""
    out = [f"{p.arch}: {p.struct}"]
    for m in p.mechanisms:
        out.append(f"  {m.key} {m.name}: " + (f"none: {m.absent}" if m.absent is not None else m.what))
    for f in p.fields:
        said = [f"{fill.key} {fill.how}" for fill in f.fills if fill.how] + ([f.note] if f.note else [])
        if said:
            out.append(f"  {f.name}: " + "; ".join(said))
    out += [f"  note: {n}" for n in p.notes]
    return out


def side_by_side(columns: list[list[str]]) -> list[str]:
    widths = [max(len(line) for line in col) for col in columns]
    height = max(len(col) for col in columns)
    padded = [col + [""] * (height - len(col)) for col in columns]
    return [
        GUTTER.join(line.ljust(w) for line, w in zip(cells, widths, strict=True)).rstrip()
        for cells in zip(*padded, strict=True)
    ]


def render(name: str, arches: list[str], kernel: KernelVersion, nr_args: int = 2) -> str:
    pictures = [picture(name, arch, kernel, nr_args) for arch in arches]
    struct = shared_struct(pictures)
    lines = [f"# layout {name}{'' if struct is None else f': {struct}'} (Linux {kernel})", ""]
    lines += side_by_side([rows(p) for p in pictures])
    lines += ["", "marks: " + ", ".join(f"{mark} {what}" for mark, what in MARKS.items())]
    for p in pictures:
        lines += ["", *details(p)]
    return "\n".join(lines) + "\n"
