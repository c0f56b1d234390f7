"""`ftlab report OBJ CALL -o FILE.html [--at SYM]`: one self-contained HTML page of a function on
every arch asked for: its patch site in each state, each mechanism's snapshot (and each BPF route's
ctx) against the true registers, their costs as a bar chart, and the function_graph trace of the
CALL. The page is written whole or not at all (OutputFile); stdout gets one line saying what."""

from __future__ import annotations

import io

from emulator import FtlabError

from ..builtin.function_graph import FunctionGraphTracer
from ..call_syntax import CallSequence, parse_calls
from ..output.formats import make_sink
from ..output.outfile import OutputFile
from ..views import layout_svg
from ..views.report import ArchView, page
from ..views.step_html import walks_html
from .bpf_routes import route_captures
from .mechanisms import capture_all
from .step import record
from .views import parse_at, site_states


def arch_view(lab, func: str, calls: CallSequence) -> ArchView:
    captures = capture_all(lab, func, calls) + route_captures(lab, func, calls)
    return ArchView(lab.arch, site_states(lab, func), captures, function_graph(lab, calls))


def function_graph(lab, calls: CallSequence) -> str:
    """What `ftlab trace --tracer function_graph OBJ CALL` prints for this lab."""
    text = io.StringIO()
    sink = make_sink("text", "function_graph", text, lab.machine.symbols, lab.arch.name, lab.kernel)
    with FunctionGraphTracer(lab, sink):
        outcome = lab.run_calls(calls)
    text.writelines(f"# {line}\n" for line in outcome.lines())
    return text.getvalue()


STEPPED = "ftrace_caller"  # the mechanism whose walk the page shows
LAYOUTS = ("ftrace_regs", "pt_regs")  # the structures the snapshots are, drawn as `ftlab layout` draws them


def _steps(hits) -> str:
    return "\n".join(walks_html(hit) for hit in hits)


def cmd_report(args, out, labs) -> None:
    calls = parse_calls(args.call)
    with OutputFile(args.output, binary=True) as output:  # checked before any work; in place when complete
        views, hits, name = [], [], ""
        for lab in labs(args):
            lab.check_calls(calls)
            spec = args.at or calls.calls[0].name
            func, offset = parse_at(lab, spec)
            if offset is not None:
                raise FtlabError(
                    f"--at {spec.strip()}: the report is of a function's entry (SYM); "
                    "`ftlab regs --at SYM+OFFS` shows a kprobe inside it"
                )
            views.append(arch_view(lab, func, calls))
            hit = record(lab, STEPPED, func, None, calls)
            hit.column = lab.arch.name
            hits.append(hit)
            name = lab.target.path.name
        title = f"ftlab report: {func} in {name}"
        subtitle = (
            f"Linux {lab.kernel} model; {', '.join(v.name for v in views)}; the first hit at {func} during {calls.text}"
        )
        steps = (f"One hit, instruction by instruction ({STEPPED}, as `ftlab step` shows it)", _steps(hits))
        arches = [v.name for v in views]
        layouts = ("Layouts", "\n".join(layout_svg.render(name, arches, lab.kernel, inline=True) for name in LAYOUTS))
        data = page(title, subtitle, views, [layouts, steps]).encode()
        try:
            output.fh.write(data)
        except OSError as err:  # a full disk
            raise FtlabError(f"{args.output}: {err.strerror or err}") from None
    shown = {c.mechanism for v in views for c in v.captures}
    routes = sum(m.startswith("bpf:") for m in shown)
    out.write(
        f"report: {args.output}: {len(views)} arch{'es' if len(views) > 1 else ''}, "
        f"{len(shown) - routes} mechanisms, {routes} BPF routes, {len(data)} bytes\n"
    )


def add_parser(sub, add_target, labs) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML page: sites, snapshots against the truth, costs, function graph"
    )
    add_target(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    p.add_argument("--at", metavar="SYM", help="the function to attach to (default: the one CALL calls first)")
    p.set_defaults(func=lambda args, out: cmd_report(args, out, labs), arch="all")
