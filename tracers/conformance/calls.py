"""The calls `check` makes: a calls file (one CALL sequence a line, `#` comments), or calls made up
from the object's DWARF signatures (the lab's BTF: tracers.calls), small values for integers and a
zeroed buffer for each pointer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emulator import FtlabError

from ..call_syntax import CallSequence, parse_calls

SMALL_INT = 3  # an integer argument: small enough for loops and recursion to end at once
POINTER_BUFFER = 64  # bytes of zeroes behind each pointer argument


@dataclass(frozen=True)
class Plan:
    """What `check` runs: the call lines in order, and the functions that get none, with why."""

    lines: tuple[str, ...]
    no_call: dict[str, str]


def read_calls_file(path: Path) -> list[str]:
    """The non-blank lines of a calls file, `#` comments dropped (a `#` inside a string literal
    ends the line too: write the byte as \\x23)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise FtlabError(f"--calls {path}: {getattr(err, 'strerror', None) or err}") from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def generated_call(name: str, typed) -> str | None:
    """A CALL for a typed signature, or None when one of its parameters takes no small value."""
    args = []
    for _, ctype in typed.params:
        if ctype.kind in ("int", "enum"):
            args.append(str(SMALL_INT))
        elif ctype.kind == "pointer":
            args.append(f"buf({POINTER_BUFFER})")
        else:
            return None
    return f"{name}({', '.join(args)})"


def plan(functions: list[str], btf: dict, lines: list[str] | None) -> Plan:
    """Calls from the file when given (a function no line calls gets none), else from BTF."""
    if lines is not None:
        called = {call.name for line in lines for call in parse_calls(line).calls}
        return Plan(tuple(lines), {f: "no line of --calls calls it" for f in functions if f not in called})
    made, no_call = [], {}
    for func in functions:
        typed = btf.get(func)
        call = None if typed is None else generated_call(func, typed)
        if call is not None:
            made.append(call)
        elif typed is None:
            no_call[func] = "no DWARF signature to make a call from (give --calls)"
        else:
            kinds = ", ".join(t.text for _, t in typed.params if t.kind not in ("int", "enum", "pointer"))
            no_call[func] = f"a parameter no call is made up for ({kinds}; give --calls)"
    return Plan(tuple(made), no_call)


def called_functions(seq: CallSequence, functions: set[str]) -> list[str]:
    """The object's functions a line calls, each once, in order: the ones it checks."""
    return list(dict.fromkeys(c.name for c in seq.calls if c.name in functions))
