"""`ftlab layout NAME --format svg`: a structure's pictures as one self-contained SVG (no fonts,
styles or links from elsewhere), each arch a column of boxes whose heights are proportional to
their sizes, offsets at the left, each mechanism's mark at the right of each box, and under each
column what the mechanisms are and what they store."""

from __future__ import annotations

import textwrap
from xml.sax.saxutils import escape, quoteattr

from ..kernel_version import KernelVersion
from .layout_text import details
from .structures import ABSENT, MARKS, NOT_STORED, SAVED, WRITTEN, Picture, picture, shared_struct

PX_PER_BYTE = 3  # an 8-byte slot is 24 px tall
UNSIZED = 24  # the height of a field with no guest layout
CHAR = 7.2  # the advance of a 12 px monospace character
LINE = 16
MARK = 18  # a mark's cell
OFFSET_W = 56
GUTTER = 40
TOP = 80
FONT = "font-family:monospace;font-size:12px"
COLOURS = {"box": "#f4f6fb", "gap": "#e2e2e2", "edge": "#5a6275", SAVED: "#2f5fa8", WRITTEN: "#c26d00"}


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:g}" y="{y:g}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _label(f) -> str:
    return f"{f.name} | {f.note}" if f.note else f.name


def _mark(x: float, y: float, mark: str, key: str) -> str:
    """A mechanism's mark in a cell: its key on a filled square (the register), on an outlined one
    (a value of its own), a dot (not captured), nothing (no such mechanism)."""
    if mark == ABSENT:
        return ""
    if mark == NOT_STORED:
        return f'<circle cx="{x + (MARK - 4) / 2:g}" cy="{y:g}" r="1.5" fill="#9a9a9a"/>'
    fill, ink = (COLOURS[SAVED], "#ffffff") if mark == SAVED else ("#ffffff", COLOURS[WRITTEN])
    rect = f'<rect x="{x:g}" y="{y - 7:g}" width="{MARK - 4}" height="14" fill="{fill}" stroke="{COLOURS[mark]}"/>'
    return rect + _text(x + (MARK - 4) / 2, y + 4, key, "middle", f' fill="{ink}" style="font-size:10px"')


class Column:
    """One arch's picture, laid out from x."""

    def __init__(self, p: Picture, x: float, heading: str):
        self.p, self.x, self.heading = p, x, heading
        label = max([len(_label(f)) for f in p.fields] + [len(p.gap) + 2 for _ in p.gaps()])
        self.box_w = max(280, label * CHAR + 16 + len(p.mechanisms) * MARK + 8)
        self.width = OFFSET_W + self.box_w
        self.wrap = int(self.width / CHAR)

    def cells(self) -> float:
        """The x of the first mark's cell."""
        return self.x + OFFSET_W + self.box_w - len(self.p.mechanisms) * MARK - 4

    def height(self, f_size: int | None) -> float:
        return UNSIZED if f_size is None else max(16, f_size * PX_PER_BYTE)

    def boxes(self) -> tuple[list[str], float]:
        """The boxes, and the y under the last."""
        p, out, y = self.p, [], float(TOP)
        out.append(_text(self.x, TOP - 22, self.heading, extra=' style="font-weight:bold"'))
        out.append(_text(self.x, TOP - 8, p.extent()))
        cells = self.cells()
        for n, m in enumerate(p.mechanisms):  # the marks' keys, over their cells
            out.append(_text(cells + n * MARK + (MARK - 4) / 2, TOP - 8, m.key, "middle"))
        left = self.x + OFFSET_W
        for offset, size, f in p.spans():
            h = self.height(size)
            if offset is not None:
                out.append(_text(left - 6, y + 13, str(offset), "end"))
            if f is None:
                out.append(
                    f'<rect class="gap" x="{left:g}" y="{y:g}" width="{self.box_w:g}" height="{h:g}" '
                    f'fill="{COLOURS["gap"]}" stroke="{COLOURS["edge"]}"/>'
                )
                out.append(_text(left + 8, y + 15, f"({p.gap})", extra=' fill="#555555"'))
            else:
                out.append(self._field(f, left, y, h))
            y += h
        return out, y

    def _field(self, f, left: float, y: float, h: float) -> str:
        p = self.p
        said = "; ".join(f"{fill.key} {fill.how}" for fill in f.fills if fill.how)
        tip = f"{f.name}: {said}" if said else f.name
        dash = ' stroke-dasharray="4 3"' if f.offset is None else ""
        parts = [
            f"<g><title>{escape(tip)}</title>",
            (
                f'<rect class="field" x="{left:g}" y="{y:g}" width="{self.box_w:g}" height="{h:g}" '
                f'fill="{COLOURS["box"]}" stroke="{COLOURS["edge"]}"{dash}/>'
            ),
            _text(left + 8, y + 15, _label(f)),
        ]
        cells = self.cells()
        for n, m in enumerate(p.mechanisms):
            parts.append(_mark(cells + n * MARK, y + 12, p.mark(f, m), m.key))
        return "".join(parts) + "</g>"

    def legend(self, y: float) -> tuple[list[str], float]:
        out = []
        for line in details(self.p)[1:]:
            for n, piece in enumerate(textwrap.wrap(line.strip(), self.wrap - 4)):
                out.append(_text(self.x + (0 if n == 0 else 16), y, piece))
                y += LINE
        return out, y


def render(name: str, arches: list[str], kernel: KernelVersion, nr_args: int = 2, inline: bool = False) -> str:
    """The picture as an SVG document, or (inline) as an element for an HTML page, where the SVG
    namespace is implied."""
    pictures = [picture(name, arch, kernel, nr_args) for arch in arches]
    struct = shared_struct(pictures)
    title = f"ftlab layout {name}{'' if struct is None else f': {struct}'} (Linux {kernel})"
    columns, x = [], 16.0
    for p in pictures:
        columns.append(Column(p, x, p.arch if struct else f"{p.arch}: {p.struct}"))
        x += columns[-1].width + GUTTER
    body, bottom = [_text(16, 24, title, extra=' style="font-weight:bold;font-size:14px"')], float(TOP)
    for c in columns:
        boxes, y = c.boxes()
        body += boxes
        bottom = max(bottom, y)
    key_y = bottom + 28
    kx = 16.0
    for mark in (SAVED, WRITTEN, NOT_STORED):
        body.append(_mark(kx, key_y - 4, mark, pictures[0].mechanisms[0].key))
        body.append(_text(kx + MARK + 2, key_y, MARKS[mark]))
        kx += MARK + 2 + len(MARKS[mark]) * CHAR + 24
    end = key_y + 12
    for c in columns:
        legend, y = c.legend(key_y + 28)
        body += legend
        end = max(end, y)
    width, height = round(max(x - GUTTER, len(title) * CHAR * 14 / 12 + 16) + 16), round(end + 8)
    namespace = "" if inline else ' xmlns="http://www.w3.org/2000/svg"'
    return (
        f'<svg{namespace} width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style={quoteattr(FONT)}>'
        f"<title>{escape(title)}</title>"
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>' + "".join(body) + "</svg>\n"
    )
