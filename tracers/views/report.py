"""`ftlab report`'s page: one self-contained HTML document built from what the lab measured.

No JavaScript, no network, no external asset: the style is inline CSS and the chart inline SVG, so
the page reads the same in any browser, offline, and with scripts off. Every value on it comes from
an ArchView (tracers/cli/report.py fills them from a run); nothing is computed here but the layout.
Highlighted rows carry a text marker too (WRONG, NOT CAPTURED), so the page reads in black and white.
The same views give the same bytes: no timestamps, no host paths, everything in the order given.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from emulator.arch.base import Arch

from ..core.regs import decode_flags

ARCH_COLOURS = ("#3267a8", "#d9792b")  # the first arch's bars, the second's
# (id, title) of the sections every page has, in order; extra sections follow them
SECTIONS = (
    ("sites", "Patch sites"),
    ("snapshots", "Snapshots against the true registers"),
    ("costs", "Cost per event"),
    ("graph", "Function graph"),
)


@dataclass
class ArchView:
    """One arch's run: what the page shows of it."""

    arch: Arch  # names the flag bits of RFLAGS / PSTATE
    sites: list[tuple[str, str]]  # (state, 'bytes  disassembly'): tracers.cli.views.site_states
    captures: list  # tracers.cli.mechanisms.Capture: the mechanisms, then the BPF routes
    graph: str  # the function_graph tracer's trace of the CALL, as `ftlab trace` prints it

    @property
    def name(self) -> str:
        return self.arch.name

    def capture(self, mechanism: str):
        """Every arch runs the same mechanisms (a refused one says why)."""
        return next(c for c in self.captures if c.mechanism == mechanism)


def esc(value: object) -> str:
    """Text for an HTML element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def page(title: str, subtitle: str, views: Sequence[ArchView], extra: Sequence[tuple[str, str]] = ()) -> str:
    """The whole document. `extra`: (title, HTML fragment) sections placed after the built-in ones;
    a fragment is trusted markup, the title is text."""
    bodies = [sites_section(views), snapshots_section(views), costs_section(views), graph_section(views)]
    sections = [(sid, head, body) for (sid, head), body in zip(SECTIONS, bodies, strict=True)]
    sections += [(f"extra-{i}", head, body) for i, (head, body) in enumerate(extra, 1)]
    nav = "".join(f'<li><a href="#{sid}">{esc(head)}</a></li>' for sid, head, _ in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body>",
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav><ol>{nav}</ol></nav></header>",
        *(f'<section id="{sid}"><h2>{esc(head)}</h2>\n{body}\n</section>' for sid, head, body in sections),
        "<footer>Made by <code>ftlab report</code>: no scripts, no external resources.</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def sites_section(views: Sequence[ArchView]) -> str:
    """The patch site in each state (compiled, init, enabled, kprobe armed), the arches side by side."""
    head = "".join(f"<th>{esc(v.name)}</th>" for v in views)
    states = [state for state, _ in views[0].sites]
    rows = "".join(
        f'<tr><th scope="row">{esc(state)}</th>'
        + "".join(f"<td><code>{esc(dict(v.sites)[state])}</code></td>" for v in views)
        + "</tr>"
        for state in states
    )
    return f'<table class="sites"><thead><tr><th>state</th>{head}</tr></thead><tbody>{rows}</tbody></table>'


def snapshots_section(views: Sequence[ArchView]) -> str:
    """Per mechanism, each arch's snapshot field by field against the truth."""
    order = _mechanisms(views)
    legend = (
        '<p class="legend"><span class="wrong">WRONG</span>: the saved value differs from the true one (the '
        "register, or the kernel's definition of the field). "
        '<span class="missing">NOT CAPTURED</span>: the snapshot does not save this field.</p>'
    )
    blocks = []
    for mech, title in order.items():
        captures = [v.capture(mech) for v in views]
        own = len({c.title for c in captures}) > 1  # a release's own trampoline or ctx: each arch names it
        cells = "".join(_snapshot(v, c, own) for v, c in zip(views, captures, strict=True))
        head = esc(mech if own else title)
        blocks.append(f'<article class="mechanism"><h3>{head}</h3><div class="arches">{cells}</div></article>')
    return legend + "\n".join(blocks)


def _mechanisms(views: Sequence[ArchView]) -> dict[str, str]:
    """mechanism -> title, in the order of the first arch that has it."""
    order: dict[str, str] = {}
    for v in views:
        for c in v.captures:
            order.setdefault(c.mechanism, c.title)
    return order


def _snapshot(view: ArchView, c, own_title: bool) -> str:
    head = f"<h4>{esc(view.name)}{': ' + esc(c.title) if own_title else ''}</h4>"
    head += f'<p class="note">{esc(c.note)}</p>' if c.note else ""
    if c.refused:
        return f'<div>{head}<p class="refused">at {esc(c.at)}: not on {esc(view.name)}: {esc(c.refused)}</p></div>'
    what = f"at {c.at}: {c.kind}, {c.insns:.0f} instructions and {c.stored:.0f} bytes stored per event"
    rows = []
    checks = c.verification.checks if c.verification else ()
    for k in checks:
        if k.equal:
            status, cls = "equal" + (" (by the kernel's definition)" if k.by_meaning else ""), ""
        else:
            status, cls = "WRONG", ' class="wrong"'
        if k.flags:
            status += f"<br><small>saved: {esc(_bits(view, k.captured))}; true: {esc(_bits(view, k.truth))}</small>"
        rows.append(
            f"<tr{cls}><td>{esc(k.field)}</td><td>{k.captured:#018x}</td><td>{k.truth:#018x}</td><td>{status}</td></tr>"
        )
    rows += [
        f'<tr class="missing"><td>{esc(name)}</td><td>-</td><td>-</td><td>NOT CAPTURED</td></tr>' for name in c.missing
    ]
    wrong = sum(not k.equal for k in checks)
    tally = f"{len(checks) - wrong} equal, {wrong} wrong, {len(c.missing)} not captured"
    table = (
        f'<table class="snapshot" data-arch="{esc(view.name)}" data-mechanism="{esc(c.mechanism)}">'
        "<thead><tr><th>field</th><th>saved</th><th>true</th><th>status</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return f'<div>{head}<p class="at">{esc(what)}<br>{tally}</p>{table}</div>'


def _bits(view: ArchView, value: int) -> str:
    return " ".join(decode_flags(view.arch, value)) or "-"


def costs_section(views: Sequence[ArchView]) -> str:
    """Two bar charts, one bar per arch for each mechanism: the lab code's instructions per event,
    and the bytes it stored per event."""
    intro = (
        "<p>Counted exactly in the lab's guest code (trampolines, exception entry, single-step slots); "
        "the CPU's own exception frame and the Python that stands for kernel C are not counted. "
        "A BPF route's cost is per program run of <code>r0 = 0; exit</code>.</p>"
    )
    legend = "".join(
        f'<span class="key"><svg width="14" height="14" aria-hidden="true">'
        f'<rect width="14" height="14" fill="{colour}"/></svg> {esc(v.name)}</span>'
        for v, colour in zip(views, ARCH_COLOURS, strict=False)
    )
    charts = [
        _bar_chart(views, "insns", "instructions per event", lambda c: c.insns),
        _bar_chart(views, "stored", "bytes stored per event", lambda c: c.stored),
    ]
    return intro + f'<p class="keys">{legend}</p>' + "".join(charts)


LABEL_W, BAR_W, BAR_H, GAP = 300, 520, 13, 10


def _bar_chart(views: Sequence[ArchView], measure: str, unit: str, value) -> str:
    order = _mechanisms(views)
    values = [value(c) for v in views for c in v.captures if not c.refused]
    top = _nice_ceiling(max(values, default=0))
    group_h = len(views) * BAR_H + GAP
    height = 30 + len(order) * group_h + 10
    width = LABEL_W + BAR_W + 90
    svg = (
        f'<svg class="chart" data-measure="{measure}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(unit)} per mechanism and arch">'
    )
    out = [f"<figure><figcaption>{esc(unit.capitalize())}</figcaption>", svg]
    for i in range(5):  # the scale: 0, 1/4, ... of a round maximum
        x = LABEL_W + BAR_W * i / 4
        out.append(
            f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{height - 8}" class="grid"/>'
            f'<text x="{x:.1f}" y="15" class="tick">{_num(top * i / 4)}</text>'
        )
    for g, mech in enumerate(order):
        y0 = 30 + g * group_h
        out.append(
            f'<text x="{LABEL_W - 8}" y="{y0 + len(views) * BAR_H / 2 + 4:.1f}" class="label">{esc(mech)}</text>'
        )
        for a, (v, colour) in enumerate(zip(views, ARCH_COLOURS, strict=False)):
            c = v.capture(mech)
            y = y0 + a * BAR_H
            if c.refused:
                out.append(f'<text x="{LABEL_W + 4}" y="{y + BAR_H - 3}" class="refused">{esc(v.name)}: refused</text>')
                continue
            n = value(c)
            w = BAR_W * n / top if top else 0
            out.append(
                f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H - 2}" fill="{colour}" '
                f'data-arch="{esc(v.name)}" data-mechanism="{esc(mech)}" data-value="{n:.2f}">'
                f"<title>{esc(v.name)} {esc(mech)}: {n:.2f} {esc(unit)}</title></rect>"
                f'<text x="{LABEL_W + w + 4:.1f}" y="{y + BAR_H - 3}" class="value">{n:.0f} {esc(v.name)}</text>'
            )
    out.append("</svg></figure>")
    return "".join(out)


def _nice_ceiling(x: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least x (0 for 0)."""
    if x <= 0:
        return 0
    scale = 10.0 ** math.floor(math.log10(x))
    return next(m * scale for m in (1, 2, 5, 10) if m * scale >= x)


def _num(x: float) -> str:
    return f"{x:.0f}" if x == int(x) else f"{x:.1f}"


def graph_section(views: Sequence[ArchView]) -> str:
    """The function_graph trace of the CALL, per arch, verbatim."""
    cells = "".join(f"<div><h3>{esc(v.name)}</h3><pre>{esc(v.graph)}</pre></div>" for v in views)
    return f'<div class="arches">{cells}</div>'


STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 0 auto; max-width: 1240px; padding: 1.5em 2em; color: #1d2430; background: #fff; }
header { border-bottom: 2px solid #1d2430; margin-bottom: 1em; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #c8ced8; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
h4 { font-size: .95em; margin: .2em 0; }
nav ol { display: flex; flex-wrap: wrap; gap: .3em 1.5em; padding-left: 1.2em; }
code, pre, td { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
table { border-collapse: collapse; margin: .3em 0; }
th, td { border: 1px solid #c8ced8; padding: 2px 8px; text-align: left; vertical-align: top; }
thead th { background: #eef1f5; }
table.sites th[scope=row] { background: #f6f7f9; white-space: nowrap; }
.arches { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1.5em; }
.arches > div { min-width: 0; }
.mechanism { border-top: 1px dashed #c8ced8; }
tr.wrong td, span.wrong { background: #ffd9d6; font-weight: bold; }
tr.missing td, span.missing { background: #eceef1; color: #5b6472; font-style: italic; }
span.wrong, span.missing { padding: 0 .3em; }
p.refused { background: #fff4d6; border-left: 4px solid #d9a400; padding: .4em .6em; }
p.note, p.at { margin: .2em 0; color: #3f4856; }
pre { background: #f6f7f9; border: 1px solid #c8ced8; padding: .6em; overflow-x: auto; }
svg.chart text { font: 12px "DejaVu Sans", sans-serif; fill: #1d2430; }
svg.chart text.label { text-anchor: end; }
svg.chart text.tick { text-anchor: middle; fill: #5b6472; }
svg.chart text.refused { fill: #8a6d00; font-style: italic; }
svg.chart line.grid { stroke: #e1e5eb; }
figure { margin: 1em 0; }
figcaption { font-weight: bold; margin-bottom: .3em; }
.keys .key { margin-right: 1.5em; }
footer { margin-top: 3em; color: #5b6472; font-size: .9em; }
"""
