"""`ftlab compare --beside`: what moved from the -pg mcount call after the prologue to the call at
the function's entry, -mfentry on x86_64 (torvalds/linux d57c5d51a301, "ftrace/x86: Add support for
-mfentry to x86_64", 2011; mcount itself removed in 5.2, 562e14f72292) and patchable entries on arm64
(3b23e4991fb6, "arm64: implement ftrace with regs", 5.5).

Each line is computed from one arch's two columns of `compare`: the same function's first hit,
through ftrace_caller's ftrace_regs, in the object with entry sites and in the one with mcount
sites. Nothing is said per arch: what an mcount site loses is read off its captures.
"""

from __future__ import annotations

from emulator.asm import disassemble

from ..call_syntax import CallSequence
from .mechanisms import capture

TITLE = "what moved to -mfentry (x86_64, d57c5d51a301) / patchable entries (arm64, 3b23e4991fb6, 5.5)"
TOPICS = ("arguments", "parent ip", "place", "cost")


def mcount_lesson(cols, func: str, calls: CallSequence, out) -> list[dict]:
    """The lesson of each arch whose two columns are one object with entry sites and one with
    mcount sites; a line saying why not for an arch whose two are of one kind. Returns JSON rows."""
    arches = list(dict.fromkeys(c.lab.arch.name for c in cols))
    out.write(f"\n{TITLE}: {func}, first hit, ftrace_caller's ftrace_regs\n")
    lessons = {}
    for arch in arches:
        pair = [c for c in cols if c.lab.arch.name == arch]
        entry = [c for c in pair if not c.site.encoding.after_prologue]
        mcount = [c for c in pair if c.site.encoding.after_prologue]
        if len(entry) != 1 or len(mcount) != 1:
            kind = pair[0].site.encoding.name
            out.write(f"  {arch}: no lesson: {' and '.join(c.obj for c in pair)} both have {kind} sites\n")
            continue
        lessons[arch] = (mcount[0].obj, _lines(entry[0], mcount[0], func, calls))
    rows = []
    for topic in TOPICS if lessons else ():
        out.write(f"{topic}\n")
        for arch, (obj, lines) in lessons.items():
            out.write(f"  {arch}: {lines[topic]}\n")
            rows.append({"arch": arch, "object": obj, "lesson": topic, "text": lines[topic]})
    return rows


def _lines(entry, mcount, func: str, calls: CallSequence) -> dict[str, str]:
    e, m = entry.captures["ftrace_caller"], mcount.captures["ftrace_caller"]
    return {
        "arguments": _arguments(entry, mcount, e, m, func),
        "parent ip": _parent(entry, mcount, e, m),
        "place": _place(entry, mcount, m, func, calls),
        "cost": f"{entry.site.encoding.name} sites: {_caller(entry)} {_cost(e)}; "
        f"mcount sites: {_caller(mcount)} {_cost(m)}",
    }


def argument_registers(lab, func: str) -> tuple[tuple[str, ...], bool]:
    """The registers holding func's arguments (its signature's count, at most the arch's argument
    registers), and whether that count is known (else every argument register)."""
    regs = lab.machine.arch.arg_regs
    sig = lab.calls.signatures.get(func)
    return (regs, False) if sig is None else (regs[: len(sig.params)], True)


def _arguments(entry, mcount, e, m, func: str) -> str:
    regs, known = argument_registers(entry.lab, func)
    of = (
        f"{func}'s {len(regs)} argument register{'s' if len(regs) != 1 else ''}"
        if known
        else "every argument register (arity unknown)"
    )
    kind = entry.site.encoding.name
    lost = [r for r in regs if r not in m.fields]
    wrong = [r for r in regs if r in m.fields and m.fields[r] != e.fields[r]]
    if not regs or not (lost or wrong):
        return f"the mcount snapshot holds {of} ({', '.join(regs) or 'none'}) as the {kind} one does"
    site = mcount.captures["kprobe"].fields  # the true registers at the instruction after the site
    lr = mcount.lab.machine.arch.lr

    def held(r: str) -> str:
        value = site.get(r)
        if value is None:
            return ""
        return f", at the site {value:#x}" + (f", a copy of {lr}" if lr and value == site.get(lr) else "")

    parts = [f"{r} not saved (the {kind} snapshot's {e.fields[r]:#x}{held(r)})" for r in lost]
    parts += [f"{r} wrong: {m.fields[r]:#x} (the {kind} snapshot's {e.fields[r]:#x})" for r in wrong]
    rest = [r for r in regs if r not in lost + wrong]
    if rest:
        parts.append(f"{', '.join(rest)} as the {kind} one")
    return f"of {of}: " + "; ".join(parts)


def _caller_function(lab, addr: int | None) -> str:
    hit = None if addr is None else lab.machine.symbols.lookup(addr)
    return "?" if hit is None else hit[0].name


def _parent(entry, mcount, e, m) -> str:
    """Where each site kind finds the parent (its SiteEncoding's phrase), and whether the mcount
    site's names the same caller as the entry site's."""
    names = [entry.lab.machine.symbols.name(e.parent), mcount.lab.machine.symbols.name(m.parent)]
    callers = [_caller_function(entry.lab, e.parent), _caller_function(mcount.lab, m.parent)]
    verdict = f"the same caller, {callers[0]}: right" if callers[0] == callers[1] else "another caller: WRONG"
    return (
        f"{entry.site.encoding.name} {names[0]} ({entry.site.encoding.where}); "
        f"mcount {names[1]} ({mcount.site.encoding.where}): {verdict}"
    )


def _place(entry, mcount, m, func: str, calls: CallSequence) -> str:
    """Each site's offset; for the mcount site the prologue before it, and its snapshot's sp and fp
    against the function's entry, as a kprobe on its first instruction sees them."""
    lab, site = mcount.lab, mcount.site
    arch = lab.machine.arch
    prologue = disassemble(arch, lab.machine.read(site.func.addr, site.addr - site.func.addr), site.func.addr)
    where = (
        f"{entry.site.encoding.name} at {func}+{entry.site.ip - entry.site.func.addr:#x}, before the prologue; "
        f"mcount at {func}+{site.ip - site.func.addr:#x}, after {len(prologue)} instructions of it"
    )
    at_entry = capture(lab, "kprobe", func, calls, 0)
    if at_entry.refused or not at_entry.events:
        return f"{where} (the entry's sp and fp unknown: {at_entry.refused or 'no kprobe hit at the entry'})"
    start, there = at_entry.fields, mcount.captures["kprobe"].fields
    fp = next(f for f in (arch.fp, "fp") if f in m.fields)  # ftrace_regs' name for it (arm64: fp)

    def sp(value: int) -> str:
        delta = start[arch.sp] - value
        return "the entry's" if not delta else f"{abs(delta)} bytes {'below' if delta > 0 else 'above'} the entry's"

    def frame(value: int) -> str:  # a frame pointer is compared as a value: the caller's may be 0
        if value == start[arch.fp]:
            return "the entry's"
        own = f"{func}'s own frame " if value == there[arch.fp] else ""
        return f"{own}{value:#x}, not the entry's {start[arch.fp]:#x}"

    return (
        f"{where}: sp there is {sp(there[arch.sp])}; the snapshot's sp is {sp(m.fields[arch.sp])}, "
        f"its {fp} {frame(m.fields[fp])}"
    )


def _caller(col) -> str:
    lab, site = col.lab, col.site
    return lab.machine.symbols.name(lab.ftrace.callers[site.encoding.name].for_site(site.literal))


def _cost(c) -> str:
    return f"{c.insns:.0f} insns, {c.stored:.0f} bytes stored per event"
