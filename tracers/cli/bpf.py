"""`ftlab bpf OBJ CALL --prog PROG.bpf.o`: BPF programs attached by their sections to OBJ's
functions; CALL runs under them. Prints the trace their bpf_printk calls wrote (the nop tracer's,
as the kernel's trace file shows it), the calls' results, and every map's contents as
`bpftool map dump` prints them; in JSON, the maps are in the final summary record."""

from __future__ import annotations

import argparse

from ..builtin.bpf import BpfTracer
from ..builtin.trace_clock import CLOCKS
from ..call_syntax import parse_calls
from ..output.formats import make_sink


def cmd_bpf(args, out, labs) -> None:
    calls = parse_calls(args.call)
    for lab in labs(args):
        lab.check_calls(calls)
        sink = make_sink(args.format, "nop", out, lab.machine.symbols, lab.arch.name, lab.kernel)
        tracer = BpfTracer(lab, sink, args.prog, clock=args.clock, verify=args.verify, cookies=dict(args.cookie))
        with tracer:
            outcome = lab.run_calls(calls, args.ret)
        if args.format == "text":
            out.writelines(f"# {line}\n" for line in outcome.lines())
            for name, text in tracer.map_dumps():
                out.write(f"# map {name}\n{text}")


def _cookie(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not sep or not name or not 0 <= number < 1 << 64:
        raise argparse.ArgumentTypeError(f"'{text}': expected PROG=VALUE, a u64 (e.g. multi_entry=0x1234)")
    return name, number


def add_parser(sub, add_target, add_ret, add_golden, labs) -> None:
    p = sub.add_parser("bpf", help="run CALL under BPF programs attached by their sections (kprobe, fentry, ...)")
    add_target(p)
    add_ret(p)
    p.add_argument(
        "--prog",
        action="append",
        required=True,
        metavar="PROG.bpf.o",
        help="a BPF object (clang -target bpf): every program in it is attached by its section name, or "
        "with :PROG[,PROG...] only those (repeatable)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare the pt_regs each kprobe-route program is handed with the true registers",
    )
    p.add_argument(
        "--cookie",
        action="append",
        default=[],
        type=_cookie,
        metavar="PROG=VALUE",
        help="the attach cookie bpf_get_attach_cookie() returns in PROG (libbpf's opts.cookie; default 0)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="counter", help="trace_clock (and bpf_ktime_get_ns)")
    add_golden(p)
    p.set_defaults(func=lambda args, out: cmd_bpf(args, out, labs))
