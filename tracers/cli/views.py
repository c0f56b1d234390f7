"""`ftlab regs` and `ftlab compare`: the snapshot tables and the side-by-side architecture view
(with --beside, each arch's two builds of the same code side by side: tracers.cli.mcount_lesson)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from emulator import FtlabError
from emulator.asm import disassemble

from ..call_syntax import CallSequence
from ..core.ftrace import Site
from ..core.regs import decode_flags
from .bpf_routes import PROGRAM_NOTE, PROPOSAL, ROUTES, route_costs
from .mcount_lesson import mcount_lesson
from .mechanisms import MECHANISMS, Capture, capture_all


def parse_at(lab, spec: str) -> tuple[str, int | None]:
    """`fib` (the function's entry: every mechanism) or `fib+0x8` (a kprobe there): a function of
    the lab's object, and an offset inside it."""
    func, plus, off = spec.strip().partition("+")
    shown = _printable(spec)
    if func not in lab.calls.functions:
        raise FtlabError(f"--at {shown}: no function '{_printable(func)}' in {lab.target.path.name}")
    if not plus:
        return func, None
    try:
        offset = int(off, 0)
    except ValueError:
        raise FtlabError(f"--at {shown}: '{_printable(off)}' is not an offset (use SYM or SYM+0x10)") from None
    size = lab.machine.symbols.get(func).size
    if not 0 <= offset < size:
        raise FtlabError(f"--at {shown}: {func} is {size:#x} bytes long; the offset must be inside it")
    return func, offset


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _bits(arch, value: int) -> str:
    return " ".join(decode_flags(arch, value)) or "-"


def regs_table(lab, captures, out) -> None:
    arch = lab.arch
    for c in captures:
        out.write(f"== {c.title}\n")
        if c.note:
            out.write(f"   {c.note}\n")
        out.write(f"   at {c.at}")
        if c.refused:
            out.write(f": not on {arch.name}: {c.refused}\n\n")
            continue
        out.write(
            f": {c.kind}, {c.insns:.0f} instructions and {c.stored:.0f} bytes stored by the lab's code per event\n"
        )
        out.write(f"   {'field':<8} {'saved':<18} {'true':<18} status\n")
        for check in c.verification.checks:
            status = "equal" if check.equal else "DIFFERENT"
            if check.by_meaning:
                status += " (by the kernel's definition of the field)"
            out.write(f"   {check.field:<8} {check.captured:#018x} {check.truth:#018x} {status}\n")
            if check.flags:
                out.write(
                    f"   {'':<8} saved bits: {_bits(arch, check.captured)}; true bits: {_bits(arch, check.truth)}"
                    + (f"; differ: {' '.join(c.verification.lost_bits(check))}" if not check.equal else "")
                    + "\n"
                )
        for name in c.missing:
            out.write(f"   {name:<8} {'not captured':<18}\n")
        out.write("\n")


def regs_json(lab, captures) -> dict:
    arch = lab.arch
    rows = []
    for c in captures:
        row = {"mechanism": c.mechanism, "title": c.title, "at": c.at, "refused": c.refused}
        if c.note:
            row["note"] = c.note
        if not c.refused:
            row.update(
                kind=c.kind,
                missing=c.missing,
                mismatch=c.mismatch,
                insns_per_event=c.insns,
                bytes_per_event=c.stored,
                fields={
                    k.field: {
                        "saved": k.captured,
                        "true": k.truth,
                        "equal": k.equal,
                        "by_meaning": k.by_meaning,
                        **(
                            {"saved_bits": decode_flags(arch, k.captured), "true_bits": decode_flags(arch, k.truth)}
                            if k.flags
                            else {}
                        ),
                    }
                    for k in c.verification.checks
                },
            )
        rows.append(row)
    return {"arch": arch.name, "mechanisms": rows}


def site_rows(lab):
    """(function, ip, [(state, bytes, disassembly)]) for every site: compiled, after init, enabled;
    for a site after the prologue (-pg mcount) first that prologue."""
    m = lab.machine
    for s in lab.sites:
        states = []
        prologue = _prologue(m, s)
        if prologue is not None:
            states.append(("prologue", *prologue))
        for state, code in (("compiled", s.compiled), ("init", s.disabled), ("enabled", s.enabled)):
            text = "; ".join(_annotate(m, s, t) for _, _, t in disassemble(m.arch, code, s.addr))
            states.append((state, code, text))
        yield s.func.name, s.ip, states


def _prologue(m, site) -> tuple[bytes, str] | None:
    """The code before a site after the prologue (-pg mcount), and its disassembly; None for a
    site before it."""
    if not site.encoding.after_prologue:
        return None
    code = m.read(site.func.addr, site.addr - site.func.addr)
    return code, "; ".join(t for _, _, t in disassemble(m.arch, code, site.func.addr))


def _annotate(m, site, text: str) -> str:
    """objdump's `<symbol>` for a branch target; the compiled call by the symbol its kind calls (the
    runtime's mcount and __fentry__ are one `ret`)."""
    text = m.annotate(text)
    for name in site.encoding.call_symbols:
        sym = m.symbols.get(name)
        if sym is not None:
            text = text.replace(f"{sym.addr:#x} <{m.symbols.name(sym.addr)}>", f"{sym.addr:#x} <{name}>")
    return text


def site_states(lab, func: str) -> list[tuple[str, str]]:
    """(state, 'bytes  disassembly') of the function's patch site: compiled, init, enabled, and a
    kprobe armed on the instruction after it."""
    m, site = lab.machine, lab.ftrace.site(func)

    def show(code: bytes, addr: int) -> str:
        return f"{code.hex(' ')}  " + "; ".join(_annotate(m, site, t) for _, _, t in disassemble(m.arch, code, addr))

    after = site.ip + site.encoding.size
    size = disassemble(m.arch, m.read(after, 16), after)[0][1]
    brk = lab.karch.kprobes.BREAKPOINT
    return [
        ("compiled", show(site.compiled, site.addr)),
        ("init", show(site.disabled, site.addr)),
        ("enabled", show(site.enabled, site.addr)),
        ("kprobe armed", f"at {m.symbols.name(after)}: " + show(brk + m.read(after, size)[len(brk) :], after)),
    ]


@dataclass
class Column:
    """One (arch, object) of `ftlab compare`: its lab, the function's patch site, and every
    mechanism's capture there."""

    lab: Any
    label: str  # its heading: the arch, or beside another object 'arch object'
    site: Site
    captures: dict[str, Capture]

    @property
    def obj(self) -> str:
        return self.lab.target.path.stem

    @property
    def legacy(self) -> bool:
        """Its site is an older kind than the modelled release's (the -pg mcount call)."""
        return self.site.encoding is not self.lab.karch.sites


def columns(labs, func: str, calls: CallSequence, beside=()) -> list[Column]:
    """Each lab's column; with `beside` (a second object's labs, one per arch of `labs`) each arch's
    column of it after that arch's."""
    partner = {lab.arch.name: lab for lab in beside}
    ordered = [x for lab in labs for x in ((lab, partner[lab.arch.name]) if beside else (lab,))]
    return [
        Column(
            lab,
            f"{lab.arch.name} {lab.target.path.stem}" if beside else lab.arch.name,
            lab.ftrace.site(func),
            {c.mechanism: c for c in capture_all(lab, func, calls)},
        )
        for lab in ordered
    ]


def compare(labs, func: str, calls: CallSequence, out, beside=()) -> list[dict]:
    """Mechanism by mechanism, the arches side by side; with `beside` each arch's two objects side
    by side, then what moved from the one's mcount sites to the other's entry sites."""
    cols = columns(labs, func, calls, beside)
    width = 50 if len(cols) <= 2 else 34
    out.write(f"{func}: called as {calls.text}\n\n")
    out.write(f"{'':<15}" + "".join(f"{c.label:<{width}}" for c in cols) + "\n")
    _site_state_rows(cols, func, width, out)
    _mechanism_rows(cols, width, out)
    routes = _route_rows(cols, func, calls, width, out)
    rows = _json_rows(cols, routes)
    if beside:
        rows += mcount_lesson(cols, func, calls, out)
    return rows


def _write_rows(rows: dict[str, list[str]], width: int, out) -> None:
    for label, values in rows.items():
        out.write(f"  {label:<13}" + "".join(f"{_fit(v, width):<{width}}" for v in values) + "\n")


def _site_state_rows(cols: list[Column], func: str, width: int, out) -> None:
    """site_states() of each column, after the prologue before an mcount site ('-': none ran);
    in narrow columns the instructions without their bytes."""
    states = [dict(site_states(c.lab, func)) for c in cols]
    prologues = [_prologue(c.lab.machine, c.site) for c in cols]
    narrow = width < 50
    if narrow:
        out.write("site states without their bytes (`ftlab sites` shows them)\n")
    rows = {"prologue": ["-" if p is None else f"{p[0].hex(' ')}  {p[1]}" for p in prologues]} if any(prologues) else {}
    rows.update((state, [s[state] for s in states]) for state in states[0])
    for state, values in rows.items():
        shown = [_BYTES.sub("", v) if narrow else v for v in values]
        out.write(f"{state:<15}" + "".join(f"{_fit(v, width):<{width}}" for v in shown) + "\n")


_BYTES = re.compile(r"(?:[0-9a-f]{2} )*[0-9a-f]{2}  ")  # 'e8 eb ff ff fe  ' before a disassembly


def _mechanism_rows(cols: list[Column], width: int, out) -> None:
    for mech, title in MECHANISMS.items():
        out.write(f"\n{title}\n")
        caps = [c.captures[mech] for c in cols]
        _write_rows(
            {
                "snapshot": [
                    (c.refused and "none: refused (see `ftlab regs`)") or f"{c.kind}, {len(c.fields)} fields"
                    for c in caps
                ],
                "not captured": [
                    ("-" if not c.missing else " ".join(c.missing)) if not c.refused else "" for c in caps
                ],
                "wrong": [(" ".join(c.mismatch) or "-") if not c.refused else "" for c in caps],
                "cost/event": [
                    f"{c.insns:.0f} insns, {c.stored:.0f} bytes stored" if not c.refused else "" for c in caps
                ],
            },
            width,
            out,
        )
        for col, c in zip(cols, caps, strict=True):
            if c.note:
                out.write(f"  {col.label}: {c.note}\n")


def _route_rows(cols: list[Column], func: str, calls: CallSequence, width: int, out) -> dict[str, list]:
    """The BPF routes, measured at the modelled release's kind of site only: each route's program
    is attached as that release attaches it (the BPF trampoline at an fentry site or patchable entry)."""
    measured = [c for c in cols if not c.legacy]
    routes = {c.label: route_costs(c.lab, func, calls) for c in measured}
    out.write(f"\nBPF routes: the program `r0 = 0; exit` on each, per run ({PROGRAM_NOTE})\n")
    skipped = [c.label for c in cols if c.legacy]
    if skipped:
        out.write(
            f"  not measured for {', '.join(skipped)}: mcount sites; the routes are modelled on the release's "
            "own sites (x86 dropped mcount in 5.2, 562e14f72292, before BPF trampolines came in 5.5, fec56f5890d9)\n"
        )
    for i, route in enumerate(ROUTES + (PROPOSAL,) if measured else ()):
        costs = [routes[c.label][i] for c in measured]
        out.write(f"{route}\n")
        _write_rows(
            {
                "ctx": [(c.refused and "refused") or c.ctx for c in costs],
                "not captured": [
                    ("-" if not c.missing else " ".join(c.missing)) if not c.refused else "" for c in costs
                ],
                "wrong": [(" ".join(c.wrong) or "-") if not c.refused else "" for c in costs],
                "cost/run": [
                    f"{c.insns:.0f} insns, {c.stored:.0f} bytes, {c.bpf_insns:.0f} BPF" if not c.refused else ""
                    for c in costs
                ],
            },
            width,
            out,
        )
        for col, c in zip(measured, costs, strict=True):
            if c.refused or c.note:
                out.write(f"  {col.label}: {c.refused or c.note}\n")
    return routes


def _json_rows(cols: list[Column], routes: dict[str, list]) -> list[dict]:
    bpf_rows = [
        {
            "arch": col.lab.arch.name,
            "object": col.obj,
            "mechanism": f"bpf:{c.route}",
            "kind": c.ctx,
            "missing": list(c.missing),
            "mismatch": list(c.wrong),
            "insns_per_event": c.insns,
            "bytes_per_event": c.stored,
            "bpf_insns_per_event": c.bpf_insns,
            "refused": c.refused,
        }
        for col in cols
        for c in routes.get(col.label, ())
    ]
    return bpf_rows + [
        {
            "arch": col.lab.arch.name,
            "object": col.obj,
            "mechanism": c.mechanism,
            "kind": c.kind,
            "fields": len(c.fields),
            "missing": c.missing,
            "mismatch": c.mismatch,
            "insns_per_event": c.insns,
            "bytes_per_event": c.stored,
            "refused": c.refused,
        }
        for col in cols
        for c in col.captures.values()
    ]


def _fit(text: str, width: int) -> str:
    return text if len(text) < width - 1 else text[: width - 5] + "..."


def dump_json(obj, out) -> None:
    out.write(json.dumps(obj, indent=1) + "\n")
