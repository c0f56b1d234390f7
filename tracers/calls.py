"""What a CALL may pass: a function of the user's object, with as many arguments as its signature
says, when one is known.

An object file has symbols but no types, so a function's parameters come from:

  * for a bundled object, its C source (fixtures/src/: the prototypes of the functions it defines;
    fixtures/catalog.py, the tests' oracle, stays out of the lab);
  * otherwise the object's DWARF, when it was built with -g: a DW_TAG_subprogram with
    DW_AT_prototyped lists its DW_TAG_formal_parameter children, and DW_TAG_unspecified_parameters
    marks `...` (a K&R `int f()` says nothing, so it is not checked).

A function with no known signature gets its arguments as given. Whatever the signature, the
arguments past the registers must fit in the stack area the lab reserves for them
(emulator.Machine.ARG_AREA).

An object's DWARF is also the lab's BTF: a signature read from it is typed (`Signature.typed`:
each parameter's name and `CType`, and the return's), as the kernel's BTF types a function's
prototype. The probe events' parameter names and `$arg*`, the function_graph tracer's
funcgraph-args and a call's default result type read these; the C text of a bundled object gives
arity only, so an object without DWARF is traced exactly as a kernel without BTF would be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import DWARFError, ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

from emulator import FtlabError
from fixtures import source

from .output.sinks import function_arg_items


@dataclass(frozen=True)
class CType:
    """A C type as BTF keeps it once btf_type_skip_modifiers() has passed typedefs and qualifiers:
    its kind (int, pointer, struct, union, enum, float, void), its size and, for an int, its
    signedness. `text` is its C spelling, for messages."""

    kind: str
    size: int
    signed: bool = False
    text: str = ""

    @property
    def fetch_type(self) -> str | None:
        """The fetcharg type a probe event gives a value of this type: fetch_type_from_btf_type()
        (kernel/trace/trace_probe.c, v6.17): an enum is s32 (an 8-byte one s64), a pointer x64, an
        int s/u with its bits; anything else None, for which the kernel takes the default, x64."""
        if self.kind == "enum":
            return "s64" if self.size == 8 else "s32"
        if self.kind == "pointer":
            return "x64"
        if self.kind == "int" and self.size in (1, 2, 4, 8):
            return f"{'s' if self.signed else 'u'}{8 * self.size}"
        return None

    @property
    def ret_kind(self) -> str | None:
        """How a call's result of this type is read (emulator.machine.RETURN_KINDS), None where
        none fits (void; a signed char or short, which RETURN_KINDS has no kind for): a struct or
        union of 9 to 16 bytes comes back in two registers (the lab's 'pair')."""
        if self.kind in ("struct", "union"):
            return "pair" if 8 < self.size <= 16 else "u64" if self.size <= 8 else None
        fetch = self.fetch_type
        if fetch is None or fetch == "x64":
            return "u64" if fetch == "x64" else None
        kind = {"s64": "i64", "s32": "i32"}.get(fetch, fetch)
        return kind if kind in ("i64", "i32", "u64", "u32", "u16", "u8") else None


VOID = CType("void", 0, text="void")


@dataclass(frozen=True)
class Typed:
    """What BTF says of a function: its parameters' names and types, its return type."""

    params: tuple[tuple[str, CType], ...]
    ret: CType


@dataclass(frozen=True)
class Signature:
    name: str
    params: tuple[str, ...]  # each parameter as C text, e.g. 'long n'
    variadic: bool
    source: str  # where it was read: 'fixtures/src/funcs.c', or "OBJ's DWARF"
    typed: Typed | None = None  # from DWARF only: the lab's BTF

    @property
    def ret_kind(self) -> str | None:
        """How to read this function's result when the user names no type (RETURN_KINDS), or None."""
        return None if self.typed is None else self.typed.ret.ret_kind

    def check(self, args: tuple) -> None:
        want, got = len(self.params), len(args)
        if got == want or (self.variadic and got > want):
            return
        least = "at least " if self.variadic else ""
        listed = ", ".join(self.params + (("...",) if self.variadic else ())) or "void"
        raise FtlabError(
            f"{self.name}() takes {least}{want} argument{'s' if want != 1 else ''} ({listed}), got {got} "
            f"(its signature from {self.source})"
        )


_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
# a top-level function definition: `[specifiers and return type] NAME(PARAMS) {`, at a line's start
_DEFINITION = re.compile(r"^(?=\S)(?:[\w \t*]*?[\s*])?([A-Za-z_]\w*)\s*\(([^;{}()]*)\)\s*\{", re.MULTILINE)
_KEYWORDS = frozenset({"if", "for", "while", "switch", "return", "sizeof"})


def prototype(name: str, params_text: str, source: str) -> Signature:
    """The signature from a C parameter list: 'long n', 'void', 'const char *fmt, ...'."""
    params = tuple(" ".join(p.split()) for p in params_text.split(",") if p.strip())
    if params == ("void",):
        params = ()
    variadic = params[-1:] == ("...",)
    return Signature(name, params[:-1] if variadic else params, variadic, source)


def source_signatures(src: Path) -> dict[str, Signature]:
    """The functions a C file defines (the bundled fixtures' sources: plain C, one definition per
    `NAME(PARAMS) {`, no macros in prototypes). A K&R `f()` says nothing, so it is left out."""
    text = _COMMENT.sub(" ", src.read_text())
    found: dict[str, Signature] = {}
    for m in _DEFINITION.finditer(text):
        name, params = m.group(1), m.group(2)
        if name not in _KEYWORDS and params.strip():
            found.setdefault(name, prototype(name, params, f"fixtures/src/{src.name}"))
    return found


def dwarf_signatures(path: Path) -> dict[str, Signature]:
    """The prototyped functions the object's DWARF describes ({} without DWARF, or if unreadable:
    then calls are passed as given)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return {}
            found: dict[str, Signature] = {}
            for cu in elf.get_dwarf_info().iter_CUs():
                for die in cu.get_top_DIE().iter_children():
                    sig = _subprogram(die, f"{path.name}'s DWARF")
                    if sig is not None:
                        found.setdefault(sig.name, sig)
            return found
    # pyelftools asserts on some broken DWARF (a DW_FORM_strp without .debug_str), and gives None for
    # a string past the end of its section (AttributeError on .decode)
    except (OSError, ELFError, DWARFError, ConstructError, LookupError, ValueError, AssertionError, AttributeError):
        return {}


def _subprogram(die, source: str) -> Signature | None:
    """A function's definition (not a declaration, not an inlined or out-of-line instance: those
    name their abstract DIE, which is top-level too) with a prototype."""
    at = die.attributes
    if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in at or "DW_AT_declaration" in at:
        return None
    if not (at.get("DW_AT_prototyped") and at["DW_AT_prototyped"].value):
        return None
    params, typed, variadic = [], [], False
    for child in die.iter_children():
        if child.tag == "DW_TAG_formal_parameter":
            name = child.attributes.get("DW_AT_name")
            params.append(f"{_type_name(child)}{' ' + name.value.decode() if name else ''}".replace("* ", "*"))
            typed.append((name.value.decode() if name else "", _ctype(child)))
        elif child.tag == "DW_TAG_unspecified_parameters":
            variadic = True
    return Signature(at["DW_AT_name"].value.decode(), tuple(params), variadic, source, Typed(tuple(typed), _ctype(die)))


_QUALIFIERS = {"DW_TAG_const_type": "const", "DW_TAG_volatile_type": "volatile", "DW_TAG_restrict_type": "restrict"}
_TAGGED = {"DW_TAG_structure_type": "struct ", "DW_TAG_union_type": "union ", "DW_TAG_enumeration_type": "enum "}


def _type_name(die, depth: int = 0) -> str:
    """The C spelling of a DIE's DW_AT_type, as far as a parameter needs it: names, pointers,
    qualifiers, struct/union/enum tags ('void' when there is no type)."""
    if "DW_AT_type" not in die.attributes:
        return "void"
    t = die.get_DIE_from_attribute("DW_AT_type")
    if depth > 8:
        return "..."
    if t.tag == "DW_TAG_pointer_type":
        return _type_name(t, depth + 1) + " *"
    if t.tag in _QUALIFIERS:
        return f"{_QUALIFIERS[t.tag]} {_type_name(t, depth + 1)}"
    name = t.attributes.get("DW_AT_name")
    if name is None:
        return "?"
    return _TAGGED.get(t.tag, "") + name.value.decode()


# DWARF's base-type encodings (DWARF 5, 7.8): which are signed ints, which are floats
_SIGNED = {0x05, 0x06}  # DW_ATE_signed, DW_ATE_signed_char
_FLOAT = {0x03, 0x04}  # DW_ATE_complex_float, DW_ATE_float
_SKIPPED = {"DW_TAG_typedef", *_QUALIFIERS}  # what btf_type_skip_modifiers() passes
_KINDS = {
    "DW_TAG_pointer_type": "pointer",
    "DW_TAG_structure_type": "struct",
    "DW_TAG_union_type": "union",
    "DW_TAG_enumeration_type": "enum",
}


def _ctype(die, depth: int = 0) -> CType:
    """The CType of a DIE's DW_AT_type (void when it has none), typedefs and qualifiers passed."""
    text = _type_name(die)
    while "DW_AT_type" in die.attributes and depth < 16:
        die, depth = die.get_DIE_from_attribute("DW_AT_type"), depth + 1
        if die.tag in _SKIPPED:
            continue
        size_at = die.attributes.get("DW_AT_byte_size")
        size = size_at.value if size_at is not None else 8 if die.tag == "DW_TAG_pointer_type" else 0
        if die.tag == "DW_TAG_base_type":
            encoding = die.attributes["DW_AT_encoding"].value
            kind = "float" if encoding in _FLOAT else "int"
            return CType(kind, size, encoding in _SIGNED, text)
        return CType(_KINDS.get(die.tag, "void"), size, False, text)
    return VOID


# include/linux/ftrace_regs.h's default (533c20b062d7), which neither arch overrides: arm64's
# asm/ftrace.h (v6.16) has no FTRACE_REGS_MAX_ARGS, though its ftrace_regs holds x0-x8
FTRACE_REGS_MAX_ARGS = 6


class CallCheck:
    """The checks a call to one lab's object passes before it runs."""

    def __init__(self, lab):
        self.lab = lab

    @cached_property
    def functions(self) -> set[str]:
        return {s.name for s in self.lab.obj.functions}

    @cached_property
    def signatures(self) -> dict[str, Signature]:
        """The object's DWARF when it has some (a bundled -g object's too: it says what its C text
        says, and more), else a bundled object's C text."""
        path = self.lab.target.path
        src = source(path)
        return dwarf_signatures(path) or ({} if src is None else source_signatures(src))

    @cached_property
    def btf(self) -> dict[str, Typed]:
        """The lab's BTF: the typed prototypes of the object's functions ({} without DWARF)."""
        return {name: sig.typed for name, sig in self.signatures.items() if sig.typed is not None}

    def function_args(self, func: str, ev) -> list[str]:
        """funcgraph-args: ['n=10'] for an entry event, the items print_function_args() prints of
        its recorded arguments (tracers.output.sinks); [] for a function BTF does not describe."""
        typed = self.btf.get(func)
        if typed is None:
            return []
        params = [(name, t.kind, t.size, t.signed) for name, t in typed.params]
        return function_arg_items(params, self.recorded_args(ev), self.lab.kernel.has("funcgraph_args_unsigned_hex"))

    def recorded_args(self, ev) -> list[int]:
        """The argument words a graph entry records with funcgraph-args: FTRACE_REGS_MAX_ARGS of
        ftrace_regs_get_argument() (__graph_entry(), kernel/trace/trace_functions_graph.c,
        ff5c9c576e75). The lab's entry record already holds every register ftrace_caller saved,
        the argument registers among them, so they are read from it."""
        return [ev.regs[reg] for reg in self.lab.machine.arch.arg_regs[:FTRACE_REGS_MAX_ARGS]]

    def ret_kind(self, func: str) -> str | None:
        """How a call of func reads its result when the user names no type: its return type's
        RETURN_KINDS kind, or None (no BTF for it, or no kind fits) for the caller's default."""
        sig = self.signatures.get(func)
        return None if sig is None else sig.ret_kind

    def check(self, func: str, args: tuple) -> None:
        if func not in self.functions:
            raise FtlabError(self._not_callable(func))
        sig = self.signatures.get(func)
        if sig is not None:
            sig.check(args)

    def _not_callable(self, func: str) -> str:
        obj = self.lab.target.path.name
        sym = self.lab.machine.symbols.get(func)
        if sym is None:
            return f"no symbol '{func}' in the loaded objects"
        try:  # data (an object's, a data stub, a non-executable section) says what it is
            self.lab.machine.entry_of(func)
        except FtlabError as err:
            return str(err)
        if func in self.lab.obj.imports:
            return f"'{func}' is undefined in {obj} (a --stub stands in for it), not one of its functions"
        if sym.kind == "lab":
            return f"'{func}' is the lab's own code, not a function of {obj}"
        return f"'{func}' is not a function of {obj} (a --stub or another object's)"
