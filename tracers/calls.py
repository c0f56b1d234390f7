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


@dataclass(frozen=True)
class Signature:
    name: str
    params: tuple[str, ...]  # each parameter as C text, e.g. 'long n'
    variadic: bool
    source: str  # where it was read: 'fixtures/src/funcs.c', or "OBJ's DWARF"

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
    except (OSError, ELFError, DWARFError, ConstructError, LookupError, ValueError):
        return {}


def _subprogram(die, source: str) -> Signature | None:
    """A function's definition (not a declaration, not an inlined or out-of-line instance: those
    name their abstract DIE, which is top-level too) with a prototype."""
    at = die.attributes
    if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in at or "DW_AT_declaration" in at:
        return None
    if not (at.get("DW_AT_prototyped") and at["DW_AT_prototyped"].value):
        return None
    params, variadic = [], False
    for child in die.iter_children():
        if child.tag == "DW_TAG_formal_parameter":
            name = child.attributes.get("DW_AT_name")
            params.append(f"{_type_name(child)}{' ' + name.value.decode() if name else ''}".replace("* ", "*"))
        elif child.tag == "DW_TAG_unspecified_parameters":
            variadic = True
    return Signature(at["DW_AT_name"].value.decode(), tuple(params), variadic, source)


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


class CallCheck:
    """The checks a call to one lab's object passes before it runs."""

    def __init__(self, lab):
        self.lab = lab

    @cached_property
    def functions(self) -> set[str]:
        return {s.name for s in self.lab.obj.functions}

    @cached_property
    def signatures(self) -> dict[str, Signature]:
        path = self.lab.target.path
        src = source(path)
        return dwarf_signatures(path) if src is None else source_signatures(src)

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
