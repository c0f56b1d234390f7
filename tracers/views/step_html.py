"""`ftlab step`'s walks as HTML for the report: one table per walk, a row per instruction, the
named stores marked by the struct they fill."""

from __future__ import annotations

from html import escape

from .step import Hit
from .step_text import summary


def walks_html(hit: Hit) -> str:
    recorder = hit.recorder
    parts = [f"<p>{escape(hit.column)}: {escape(hit.title)}, one hit at <code>{escape(hit.at)}</code></p>"]
    if hit.note:
        parts.append(f"<p class='note'>{escape(hit.note)}</p>")
    for walk in recorder.walks:
        parts.append(f"<h4>{escape(summary(recorder, walk))}</h4>")
        parts.append("<table class='step'><tr><th>phase</th><th>where</th><th>instruction</th><th>effect</th></tr>")
        for step in walk.steps:
            effects = [
                escape(
                    ", ".join(
                        f"{n} {old:#x}\u2192{new:#x}"
                        for n, (old, new) in step.changed(recorder.regs, recorder.m.arch.pc).items()
                    )
                )
            ]
            for a in step.stores:
                name = f" <b class='{escape(a.struct.replace(' ', '-'))}'>{escape(a.what)}</b>" if a.struct else ""
                effects.append(f"[{a.addr:#x}] \u2190 {a.value:#x}{name}")
            if step.python:
                effects.append(f"<i>the lab's Python runs {escape(step.python)} here</i>")
            parts.append(
                f"<tr><td>{escape(step.phase)}</td><td><code>{escape(step.sym)}</code></td>"
                f"<td><code>{escape(step.insn)}</code></td><td>{'<br>'.join(e for e in effects if e)}</td></tr>"
            )
        parts.append("</table>")
    return "\n".join(parts)
