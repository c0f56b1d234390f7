"""Fetchargs compiled into guest code, as the kernel's trace_probe compiles each argument into
struct fetch_insn steps that process_fetch_insn runs (kernel/trace/trace_probe.c,
trace_probe_tmpl.h); here the steps become straight-line code instead of being interpreted at each
hit. Each argument is steps that leave a u64 value, then a store: the value goes into the event's
record as a word, truncated to the argument's type only when decoded. A load that would fault (an
address outside every mapping, copy_from_kernel_nofault's -EFAULT) marks the argument faulted and
jumps past its store.

Only what needs no Python compiles: registers, arguments, $retval, $stack, $stackN, immediates and
memory loads (@ADDR, @SYM, +OFFS(...)) of numeric and symbol types; strings and $comm do not
(compile_args() returns None, and the event keeps the Python path). `statements` writes the steps
as the arch's fetch macros (tracers/arch/<arch>/probe_events.S), the same lines for every arch."""

from __future__ import annotations

from dataclasses import dataclass

from .spec import TYPES, Fetch, FetchArg

MAX_FAULT_BITS = 64  # a record's faults word: one bit per argument


@dataclass(frozen=True)
class Where:
    """Where a hit's values are, for the program: the snapshot's captured registers (pt_regs name
    -> byte offset), the members the argument registers are read from (captured or not, as
    ftrace_regs_get_argument reads them), whether arguments past the registers are on the stack
    (x86: above the return address), and at an exit, the $argN the entry saved (ProbeSpec.entry_args:
    $argN reads its word of the entry data); None at an entry."""

    regs: dict[str, int]
    arg_members: tuple[int, ...]
    sp: str
    ret: str
    stack_args: bool
    entry_args: tuple[int, ...] | None


Step = tuple[str, int]  # (op, operand)


def compile_args(args: tuple[FetchArg, ...], where: Where, address_of) -> list[Step] | None:
    """The steps of all of an event's arguments, or None if one needs Python. The ops: freg (the
    snapshot's word at operand), data (the entry data's word at operand), imm, add, load (operand
    bytes at the value, or a fault), stackload (the word at the value if on the task stack, else
    0: $stackN), fault (a register the snapshot lacks), store (the argument's value)."""
    if len(args) > MAX_FAULT_BITS:
        return None
    steps: list[Step] = []
    for arg in args:
        size, kind = TYPES[arg.type]
        if kind == "string" or not _compilable(arg.fetch):
            return None
        f = arg.fetch
        if f.op in ("deref", "mem", "sym"):
            _address(f, where, address_of, steps)
            steps.append(("load", size))
        else:
            _value(f, where, address_of, steps)
        steps.append(("store", 0))
    return steps


def entry_steps(entry_args: tuple[int, ...], where: Where) -> list[Step]:
    """A return probe's entry handler (store_trace_entry_data): each of its $argN, as at an
    entry, stored into the next word of the entry data."""
    steps: list[Step] = []
    for n in entry_args:
        _argument(n, where, steps)
        steps.append(("store", 0))
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
        steps += [("add", 8 * int(f.value or 0)), ("stackload", 0)]
    elif f.op == "imm":
        steps.append(("imm", int(f.value or 0)))
    else:  # deref, mem, sym: a whole word
        _address(f, where, address_of, steps)
        steps.append(("load", 8))


def _address(f: Fetch, where: Where, address_of, steps: list) -> None:
    if f.op == "deref":
        assert f.inner is not None  # the parser gives every deref its operand
        _value(f.inner, where, address_of, steps)
        steps.append(("add", f.offset))
    elif f.op == "mem":
        steps.append(("imm", int(f.value or 0)))
    else:
        steps.append(("imm", address_of(str(f.value)) + f.offset))


def _register(name: str, where: Where, steps: list) -> None:
    offset = where.regs.get(name)
    steps.append(("fault", 0) if offset is None else ("freg", offset))


def _argument(n: int, where: Where, steps: list) -> None:
    """$argN (from 1), as ftrace_regs_get_argument at entry, from its entry-data word at an exit."""
    if where.entry_args is not None:
        steps.append(("data", 8 * where.entry_args.index(n)))
    elif n <= len(where.arg_members):
        steps.append(("freg", where.arg_members[n - 1]))
    elif where.stack_args:  # the words above the return address
        _register(where.sp, where, steps)
        steps += [("add", 8 * (n - len(where.arg_members))), ("load", 8)]
    else:
        steps.append(("imm", 0))


def statements(steps: list[Step], label: str, store: str, at: int) -> tuple[list[str], list[str]]:
    """The steps as fetch macro calls, and the constant pool they read (immediates and offsets
    are words there, so no arch's immediate limits apply): each argument's store is `store`
    (fetch_store: the record; fetch_save: the entry data) at byte offset `at` + 8 per argument.
    A faulting step jumps past its argument's store (label_N, N the argument), setting its bit;
    the labels label_cN name the pool's words and label_lN where a load goes on."""
    lines: list[str] = []
    pool: list[str] = []
    arg, faulting, loads = 0, False, 0
    for op, operand in steps:
        skip = f"{label}_{arg}"
        if op == "store":
            lines.append(f"{store} {at + 8 * arg}")
            if faulting:
                lines.append(f"{skip}:")
            arg, faulting = arg + 1, False
        elif op in ("imm", "add"):
            word = f"{label}_c{len(pool) // 2}"
            lines.append(f"fetch_{'const' if op == 'imm' else 'add'} {word}")
            pool += [f"{word}:", f".quad {operand & (1 << 64) - 1:#x}"]
        elif op == "load":
            lines.append(f"fetch_load{operand} {skip}, {arg}, {label}_l{loads}")
            faulting, loads = True, loads + 1
        elif op == "fault":
            lines.append(f"fetch_fault {skip}, {arg}")
            faulting = True
        elif op == "stackload":
            lines.append("fetch_stackload")
        else:  # freg, data: a word at a snapshot or entry-data offset
            lines.append(f"fetch_{op} {operand}")
    return lines, pool
