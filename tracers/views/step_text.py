"""`ftlab step`'s output: one arch's walks as a listing, several side by side aligned by what each
step does (the phases of tracers.views.step), or JSON with one record per instruction."""

from __future__ import annotations

import difflib
import itertools

from .step import Hit, Step, StepRecorder

WIDTH = 72  # one arch's column, side by side


def _regs(recorder: StepRecorder, step: Step) -> dict[str, tuple[int, int]]:
    return step.changed(recorder.regs, recorder.m.arch.pc)


def step_lines(recorder: StepRecorder, step: Step) -> list[str]:
    """An instruction, then what it changed: registers, stores (named), where Python ran."""
    lines = [f"{step.sym:<26} {step.insn}"]
    changed = _regs(recorder, step)
    if changed:
        lines.append("    " + ", ".join(f"{n} {old:#x}->{new:#x}" for n, (old, new) in changed.items()))
    for acc in step.stores:
        what = f"  {acc.what}" if acc.what else ""
        lines.append(f"    store [{acc.addr:#x}] {acc.size}: {acc.value:#x}{what}")
    if step.python:
        lines.append(f"    the lab's Python runs {step.python} here (its stores are not instructions)")
    return lines


def _blocks(recorder: StepRecorder, walk) -> list[tuple[str, list[Step]]]:
    return [(phase, list(steps)) for phase, steps in itertools.groupby(walk.steps, key=lambda s: s.phase)]


def summary(recorder: StepRecorder, walk) -> str:
    stores = [a for s in walk.steps for a in s.stores]
    named = sum(1 for a in stores if a.struct)
    back = recorder.m.symbols.name(walk.landing) if walk.landing is not None else "the caller of the calls"
    return (
        f"{walk.kind} walk: {len(walk.steps)} instructions, {len(stores)} stores "
        f"({sum(a.size for a in stores)} bytes, {named} named), then back at {back}"
    )


def _header(hit: Hit, mechanism: str, call: str) -> str:
    note = f"#   {hit.note}\n" if hit.note else ""
    return f"# {hit.column}: {mechanism} ({hit.title}): one hit at {hit.at} during {call}\n{note}"


def step_text(results: list[Hit], mechanism: str, call: str, out) -> None:
    """One hit's walks, or two side by side (two arches, or two builds of one)."""
    if len(results) == 1:
        recorder = results[0].recorder
        out.write(_header(results[0], mechanism, call))
        for walk in recorder.walks:
            out.write(f"\n# {summary(recorder, walk)}\n")
            for phase, steps in _blocks(recorder, walk):
                out.write(f"-- {phase}\n")
                for step in steps:
                    out.writelines(f"  {line}\n" for line in step_lines(recorder, step))
        return
    out.writelines(_header(hit, mechanism, call) for hit in results)
    recorders = [hit.recorder for hit in results]
    names = [hit.column for hit in results]
    kinds = [w.kind for w in recorders[0].walks]
    for kind in kinds:
        walks = [next((w for w in r.walks if w.kind == kind), None) for r in recorders]
        out.write("\n")
        for name, r, found in zip(names, recorders, walks, strict=True):
            out.write(f"# {name}: {summary(r, found) if found else f'no {kind} walk'}\n")
        sides = [_blocks(r, w) if w else [] for r, w in zip(recorders, walks, strict=True)]
        out.write(_side_by_side(recorders, sides, names))


def _side_by_side(recorders, sides, names) -> str:
    """Two arches' phase blocks, paired where the phases match in order (difflib), one step per
    row, each step's lines beside the other's."""
    left, right = sides
    matcher = difflib.SequenceMatcher(None, [p for p, _ in left], [p for p, _ in right], autojunk=False)
    rows = [f"   {names[0]:<{WIDTH}} {names[1]}"]
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        pairs = (
            list(zip(left[i1:i2], right[j1:j2], strict=True))
            if tag == "equal"
            else [(b, None) for b in left[i1:i2]] + [(None, b) for b in right[j1:j2]]
        )
        for lb, rb in pairs:
            rows.append(f"-- {(lb or rb)[0]}")
            lsteps, rsteps = (lb[1] if lb else []), (rb[1] if rb else [])
            for ls, rs in itertools.zip_longest(lsteps, rsteps):
                llines = step_lines(recorders[0], ls) if ls else []
                rlines = step_lines(recorders[1], rs) if rs else []
                for a, b in itertools.zip_longest(llines, rlines, fillvalue=""):
                    rows.append(f"   {_fit(a):<{WIDTH}} {b}".rstrip())
    return "\n".join(rows) + "\n"


def _fit(text: str) -> str:
    return text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."


def step_json(hit: Hit, mechanism: str, call: str) -> dict:
    recorder = hit.recorder
    sym = recorder.m.symbols.name
    return {
        "arch": hit.lab.arch.name,
        "object": hit.lab.target.path.name,
        "mechanism": mechanism,
        "title": hit.title,
        **({"note": hit.note} if hit.note else {}),
        "at": hit.at,
        "call": call,
        "walks": [
            {
                "walk": walk.kind,
                "landing": None if walk.landing is None else sym(walk.landing),
                "steps": [
                    {
                        "insn": step.insn,
                        "addr": step.addr,
                        "sym": step.sym,
                        "phase": step.phase,
                        "regs": {n: [old, new] for n, (old, new) in _regs(recorder, step).items()},
                        "stores": [
                            {"addr": a.addr, "size": a.size, "value": a.value, "struct": a.struct, "field": a.field}
                            for a in step.stores
                        ],
                        **({"python": step.python} if step.python else {}),
                    }
                    for step in walk.steps
                ],
            }
            for walk in recorder.walks
        ],
    }
