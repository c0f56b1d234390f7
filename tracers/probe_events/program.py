"""Fetchargs as programs guest code runs at each hit, as the kernel's trace_probe compiles each
argument into struct fetch_insn steps and process_fetch_insn runs them (kernel/trace/trace_probe.c,
trace_probe_tmpl.h). Each argument becomes steps that leave a u64 value, then STORE: the value
goes into the event's record as a word, truncated to the argument's type only when decoded. A load
that would fault (an address outside every mapping, copy_from_kernel_nofault's -EFAULT) marks the
argument faulted and skips to its STORE.

Only what needs no Python compiles: registers, arguments, $retval, $stack, $stackN, immediates and
memory loads (@ADDR, @SYM, +OFFS(...)) of numeric and symbol types; strings and $comm do not
(compile() returns None, and the event keeps the Python path). The program's layout and opcodes
are declared here once, for this compiler and the guest interpreter (asm_constants)."""

from __future__ import annotations

from dataclasses import dataclass

from emulator.layout import Layout

from .spec import TYPES, Fetch, FetchArg

PROGRAM = Layout.of("fetch program", ("event", "nr_args"))  # then its steps
STEP = Layout.of("fetch step", ("op", "operand"))
# the value = snapshot word at operand | entry data word at operand | operand; value += operand;
# value = the operand's bytes at value, or fault; value = the word at value if on the task stack,
# else 0 ($stackN); a fault (a register the snapshot lacks); store the value; the program's end
OPS = ("end", "freg", "data", "imm", "add", "load", "stackload", "fault", "store")  # "end" is 0: tested as such
OP = {name: code for code, name in enumerate(OPS)}
SAVED_ARGS = 8  # $argN of a return probe: saved at entry, as the kernel does


def asm_constants() -> dict[str, int]:
    return {
        **PROGRAM.asm_constants("PROG_"),
        **STEP.asm_constants("STEP_"),
        **{f"OP_{name.upper()}": code for name, code in OP.items()},
    }


@dataclass(frozen=True)
class Where:
    """Where a hit's values are, for the program: the snapshot's captured registers (pt_regs name
    -> byte offset), the members the argument registers are read from (captured or not, as
    ftrace_regs_get_argument reads them), whether arguments past the registers are on the stack
    (x86: above the return address), and at an exit, that $argN reads the words saved at entry."""

    regs: dict[str, int]
    arg_members: tuple[int, ...]
    sp: str
    ret: str
    stack_args: bool
    at_exit: bool


def compile_args(args: tuple[FetchArg, ...], where: Where, address_of) -> list[tuple[int, int]] | None:
    """The steps of all of an event's arguments, or None if one needs Python."""
    steps: list[tuple[int, int]] = []
    for arg in args:
        size, kind = TYPES[arg.type]
        if kind == "string" or not _compilable(arg.fetch):
            return None
        f = arg.fetch
        if f.op in ("deref", "mem", "sym"):
            _address(f, where, address_of, steps)
            steps.append((OP["load"], size))
        else:
            _value(f, where, address_of, steps)
        steps.append((OP["store"], 0))
    return steps


def _compilable(f: Fetch) -> bool:
    if f.op in ("comm", "imm_str"):
        return False
    return f.inner is None or _compilable(f.inner)


def _value(f: Fetch, where: Where, address_of, steps: list) -> None:
    if f.op == "reg":
        _register(str(f.value), where, steps)
    elif f.op == "arg":
        _argument(int(f.value or 0), where, steps)
    elif f.op == "retval":
        _register(where.ret, where, steps)
    elif f.op == "stackp":
        _register(where.sp, where, steps)
    elif f.op == "stack":  # regs_get_kernel_stack_nth: a word off the task's stack reads 0
        _register(where.sp, where, steps)
        steps += [(OP["add"], 8 * int(f.value or 0)), (OP["stackload"], 0)]
    elif f.op == "imm":
        steps.append((OP["imm"], int(f.value or 0)))
    else:  # deref, mem, sym: a whole word
        _address(f, where, address_of, steps)
        steps.append((OP["load"], 8))


def _address(f: Fetch, where: Where, address_of, steps: list) -> None:
    if f.op == "deref":
        assert f.inner is not None  # the parser gives every deref its operand
        _value(f.inner, where, address_of, steps)
        steps.append((OP["add"], f.offset))
    elif f.op == "mem":
        steps.append((OP["imm"], int(f.value or 0)))
    else:
        steps.append((OP["imm"], address_of(str(f.value)) + f.offset))


def _register(name: str, where: Where, steps: list) -> None:
    offset = where.regs.get(name)
    steps.append((OP["fault"], 0) if offset is None else (OP["freg"], offset))


def _argument(n: int, where: Where, steps: list) -> None:
    """$argN (from 1), as ftrace_regs_get_argument at entry, from the saved words at an exit."""
    if where.at_exit:
        steps.append((OP["data"], 8 * (n - 1)) if n <= SAVED_ARGS else (OP["imm"], 0))
    elif n <= len(where.arg_members):
        steps.append((OP["freg"], where.arg_members[n - 1]))
    elif where.stack_args:  # the words above the return address
        _register(where.sp, where, steps)
        steps += [(OP["add"], 8 * (n - len(where.arg_members))), (OP["load"], 8)]
    else:
        steps.append((OP["imm"], 0))


def encode(event: int, nr_args: int, steps: list[tuple[int, int]]) -> bytes:
    """The program as guest memory holds it (the operands as u64: a negative offset wraps)."""
    words = [event, nr_args]
    for op, operand in steps:
        words += [op, operand & (1 << 64) - 1]
    words += [OP["end"], 0]
    return b"".join(w.to_bytes(8, "little") for w in words)
