"""The lab's own code: assembled with keystone from readable .S sources, checked with capstone.

Sources use `//` and `/* */` comments, `NAME:` labels, `.globl NAME` for exported symbols,
`.include "FILE"` (beside the source), and GNU as's `.macro NAME arg, arg=default` ... `.endm`
(invoked with comma-separated arguments, positional or `arg=value`; `\\arg` in the body, `\\()`
to end an argument's name inside a word) and `.irp SYM, VALUE, ...` ... `.endr`. Macros and
repetitions are expanded here, so that every statement keystone sees is one instruction the
capstone round trip can check. Then named constants are substituted: struct offsets from the
layout tables (UPPERCASE, like the kernel's asm-offsets) and the addresses of other lab code's
symbols (as a linker's --defsym). Keystone's own option API is never touched: any syntax option
makes it read bare numbers as hex (keystone issues #436 and #571).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import capstone
import keystone

from .errors import FtlabError

LABEL = re.compile(r"^([A-Za-z_.$][\w.$]*):$")
NAME = re.compile(r"(?<![\w.$])[A-Za-z_][\w]*(?![\w.$])")
ARGUMENT = re.compile(r"\\(\w+)(\\\(\))?")  # \name, and the \() that may end it
NESTING = 100  # macro expansions within one another


@dataclass(frozen=True)
class Assembly:
    base: int
    code: bytes
    symbols: dict[str, int]  # every label
    exported: tuple[str, ...]  # the .globl ones
    statements: tuple[str, ...]  # instruction and data lines, in order, after substitution


@cache
def _ks(arch_id):
    return keystone.Ks(*arch_id)


@cache
def _cs(arch_id):
    return capstone.Cs(*arch_id)


@cache
def _cs_detail(arch_id):
    cs = capstone.Cs(*arch_id)
    cs.detail = True
    return cs


def starts(arch, code: bytes, addr: int) -> list[int]:
    """The address of each instruction decoded one after another from the start of code, up to
    its end or the first bytes that do not decode (capstone's lite mode: no operand details)."""
    return [address for address, _, _, _ in _cs(arch.cs).disasm_lite(code, addr)]


def decode(arch, code: bytes, addr: int):
    """The first instruction of code with capstone's operand details, or None."""
    return next(_cs_detail(arch.cs).disasm(code, addr, 1), None)


def _lines(source: str, where: Path | None) -> list[str]:
    """Statements without comments, with `.include "FILE"` replaced by that file's statements."""
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.DOTALL)
    out = []
    for raw in source.splitlines():
        line = raw.split("//", 1)[0].strip()
        if line.startswith(".include"):
            name = line.split(None, 1)[1].strip('"')
            if where is None:
                raise FtlabError(f"cannot .include {name}: the source has no directory")
            out += _lines((where / name).read_text(), where)
        elif line:
            out.append(line)
    return out


@dataclass(frozen=True)
class _Macro:
    params: tuple[str, ...]
    defaults: dict[str, str]
    body: tuple[str, ...]


def _block(lines: list[str], start: int, opener: str, closer: str, name: str) -> tuple[list[str], int]:
    """The lines from `start` to the `closer` that matches the opener before it, and the index
    after that closer."""
    depth = 1
    for i in range(start, len(lines)):
        word = lines[i].split(None, 1)[0]
        depth += (word == opener) - (word == closer)
        if depth == 0:
            return lines[start:i], i + 1
    raise FtlabError(f"{name}: {opener} without {closer}")


def _substitute(lines, values: dict[str, str]) -> list[str]:
    """`\\arg` (and a `\\()` ending it) replaced by its value; other arguments are left for the
    macro or .irp they belong to."""

    def value(m):
        return values[m.group(1)] if m.group(1) in values else m.group(0)

    return [ARGUMENT.sub(value, line) for line in lines]


def _bind(macro: _Macro, call: str, text: str, name: str) -> dict[str, str]:
    """A call's comma-separated arguments, positional or `arg=value`, over the defaults."""
    values, free = dict(macro.defaults), list(macro.params)
    for arg in (a.strip() for a in text.split(",")) if text.strip() else ():
        key, eq, rest = arg.partition("=")
        key = key.strip()
        if eq and key in macro.params:
            values[key] = rest.strip()
            if key in free:
                free.remove(key)
        elif not free:
            raise FtlabError(f"{name}: too many arguments to macro {call}: '{text}'")
        else:
            values[free.pop(0)] = arg
    return {p: values.get(p, "") for p in macro.params}


def _expand(lines: list[str], macros: dict[str, _Macro], name: str, nesting: int = 0) -> list[str]:
    if nesting > NESTING:
        raise FtlabError(f"{name}: macros nested more than {NESTING} deep (a macro that calls itself?)")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        word, rest = (line.split(None, 1) + [""])[:2]
        i += 1
        if word == ".macro":
            params = [p for p in re.split(r"[\s,]+", rest) if p]
            if not params:
                raise FtlabError(f"{name}: .macro without a name")
            body, i = _block(lines, i, ".macro", ".endm", name)
            args = [p.partition("=") for p in params[1:]]
            macros[params[0]] = _Macro(tuple(a for a, _, _ in args), {a: d for a, eq, d in args if eq}, tuple(body))
        elif word == ".irp":
            symbol, *values = [v.strip() for v in rest.split(",")]
            body, i = _block(lines, i, ".irp", ".endr", name)
            for value in values:
                out += _expand(_substitute(body, {symbol: value}), macros, name, nesting + 1)
        elif word in macros:
            macro = macros[word]
            out += _expand(_substitute(macro.body, _bind(macro, word, rest, name)), macros, name, nesting + 1)
        elif word in (".endm", ".endr"):
            raise FtlabError(f"{name}: {word} without its .macro or .irp")
        else:
            out.append(line)
    return out


STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # a string literal, escapes included


def _statements(source: str, constants: dict[str, int], where: Path | None = None, name: str = "<lab>") -> list[str]:
    out = []
    for line in _expand(_lines(source, where), {}, name):
        if "\\" in STRING.sub('""', line):  # a string's escapes (.ascii "\001") are its own
            raise FtlabError(f"{name}: '{line}' names an argument no macro or .irp around it has")
        out.append(NAME.sub(lambda m: str(constants.get(m.group(), m.group())), line))
    return out


def assemble(
    arch,
    source: str,
    base: int,
    constants: dict[str, int] | None = None,
    name: str = "<lab>",
    where: Path | None = None,
) -> Assembly:
    return assemble_statements(arch, _statements(source, constants or {}, where, name), base, name)


def preprocess(source: str, where: Path | None, name: str) -> list[str]:
    """A source's statements: comments gone, `.include`, macros and `.irp` expanded."""
    return _statements(source, {}, where, name)


def assemble_statements(arch, stmts: list[str], base: int, name: str = "<lab>") -> Assembly:
    """Preprocessed statements (labels on lines of their own) assembled at base."""
    labels = [m.group(1) for s in stmts if (m := LABEL.match(s))]
    exported = tuple(s.split()[1] for s in stmts if s.startswith(".globl"))
    body = [s for s in stmts if not s.startswith(".globl")]
    try:
        code = _keystone(arch, body, labels, base)
    except keystone.KsError as err:
        failing = _first_failing(arch, body, labels, base)
        raise FtlabError(f"{name}: keystone cannot assemble {failing}: {err}") from None
    table = code[len(code) - 8 * len(labels) :]
    symbols = dict(zip(labels, struct.unpack(f"<{len(labels)}Q", table), strict=True))
    code = code[: len(code) - 8 * len(labels)]
    return Assembly(base, code, symbols, exported, tuple(s for s in body if not LABEL.match(s)))


def _keystone(arch, body: list[str], labels: list[str], base: int) -> bytes:
    """Keystone's bytes, then a table of every label's address: it reports no symbols itself."""
    text = "\n".join(body + [".balign 8"] + [f".quad {label}" for label in labels]) + "\n"
    encoding, _ = _ks(arch.ks).asm(text, base)
    return bytes(encoding or b"")


def _first_failing(arch, body: list[str], labels: list[str], base: int) -> str:
    """The first statement keystone refuses ('it' if none alone is to blame): the shortest failing
    prefix, every label still defined after it. Keystone's own statement count does not say."""
    lo, hi = 0, len(body)  # body[:lo] assembles; body[:hi] does not (as a whole, it failed)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        defined = {m.group(1) for s in body[:mid] if (m := LABEL.match(s))}
        try:
            _keystone(arch, body[:mid] + [f"{label}:" for label in labels if label not in defined], [], base)
            lo = mid
        except keystone.KsError:
            hi = mid
    return f"'{body[hi - 1]}'" if hi else "it"


def disassemble(arch, code: bytes, addr: int) -> list[tuple[int, int, str]]:
    """(address, size, text) for each instruction capstone decodes."""
    return [(i.address, i.size, f"{i.mnemonic} {i.op_str}".strip()) for i in _cs(arch.cs).disasm(code, addr)]


def disassemble_one(arch, code: bytes, addr: int) -> str:
    insns = disassemble(arch, code, addr)
    return insns[0][2] if insns else f"(undecodable: {code.hex()})"


def is_call(insn) -> bool:
    """A call (x86 call, arm64 bl/blr): capstone's call group."""
    return insn.group(capstone.CS_GRP_CALL)


def is_return(insn) -> bool:
    """A return from a call (ret; not an exception return)."""
    return insn.group(capstone.CS_GRP_RET)


def store_bytes(insn) -> int:
    """Bytes an instruction writes to memory (capstone-decoded, with details): explicit memory
    destinations, and the implicit stack writes of push/pushfq/call. For the lab's own code."""
    name = insn.mnemonic
    if insn._cs.arch == capstone.CS_ARCH_X86:
        if name.startswith("push") or name == "call":
            return 8
        return sum(
            op.size
            for op in insn.operands
            if op.type == capstone.x86_const.X86_OP_MEM and op.access & capstone.CS_AC_WRITE
        )
    if not name.startswith("st") or name.startswith(("stlx", "stx")):
        return 0
    width = {"b": 1, "h": 2}.get(name[-1]) if name.startswith(("strb", "strh", "sturb", "sturh")) else None
    regs = [op for op in insn.operands if op.type == capstone.arm64_const.ARM64_OP_REG]
    if width is None:
        width = 8 if insn.reg_name(regs[0].reg).startswith("x") or insn.reg_name(regs[0].reg) == "xzr" else 4
    return width * (2 if name.startswith("stp") else 1)


def field_offsets(insn) -> set[int]:
    """Where in an x86 instruction its displacement and immediate fields start (capstone's
    encoding detail), where a relocation's field sits; empty elsewhere."""
    if insn._cs.arch != capstone.CS_ARCH_X86:
        return set()
    return {offset for offset in (insn.disp_offset, insn.imm_offset) if offset}


def reference_kind(insn) -> str:
    """How an instruction uses the address its relocated field holds: 'data' (a memory access
    there, an indirect call through it included, and arm64's PC-relative literal loads), 'call' (a
    direct call or jump) or 'address' (only the address: lea, adrp, add, a mov of an immediate)."""
    if insn._cs.arch == capstone.CS_ARCH_X86:
        memory = insn.mnemonic != "lea" and any(op.type == capstone.x86_const.X86_OP_MEM for op in insn.operands)
    else:
        memory = any(op.type == capstone.arm64_const.ARM64_OP_MEM for op in insn.operands) or (
            insn.mnemonic.startswith("ldr") and not insn.group(capstone.CS_GRP_JUMP)
        )
    if memory:
        return "data"
    if insn.group(capstone.CS_GRP_CALL) or insn.group(capstone.CS_GRP_JUMP):
        return "call"
    return "address"


# -- the capstone round trip ------------------------------------------------------------------

# Spellings keystone needs that capstone prints differently (keystone 0.9.2 knows no `bti`).
ALIASES = {"hint34": "btic", "hint32": "bti", "hint36": "btij", "hint38": "btijc"}
MNEMONIC_SYNONYMS = {"jz": "je", "jnz": "jne"}  # x86 condition spellings capstone prints one way
STRING_OP = re.compile(r"^((?:rep\w*\s+)?(?:movs|stos|lods|cmps|scas)[bwdq])\b.*")  # implicit operands
SIZE_WORDS = re.compile(r"\b(?:xmm|[xy]?mm)?(?:qword|dword|word|byte)\s+ptr\b")


def _normal(text: str, symbols: dict[str, int], next_ip: int | None = None) -> str:
    mnemonic, _, rest = text.partition(" ")
    text = f"{MNEMONIC_SYNONYMS.get(mnemonic, mnemonic)} {rest}"
    for label in sorted(symbols, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.$]){re.escape(label)}(?![\w.$])", str(symbols[label]), text)
    text = STRING_OP.sub(r"\1", text.lower())
    text = SIZE_WORDS.sub("", text).replace("#", "")
    text = re.sub(r"0x[0-9a-f]+", lambda m: str(int(m.group(), 16)), text)
    text = re.sub(r"\s+", "", text)
    # fold "168+8" style constant arithmetic, as the assembler did
    chain = re.compile(r"(?<![\w])(-?\d+)((?:[+-]\d+)+)(?![\w])")
    while m := chain.search(text):
        total = int(m.group(1)) + sum(int(t) for t in re.findall(r"[+-]\d+", m.group(2)))
        text = text[: m.start()] + str(total) + text[m.end() :]
    text = re.sub(r"\+-", "-", text).replace(",0]", "]").replace("+0]", "]")
    # tbz/tbnz name bits 0-31 of either register form, which encode alike: capstone prints the w form
    text = re.sub(r"^(tbn?z)x(\d+),(\d+),", lambda m: f"{m[1]}{'w' if int(m[3]) < 32 else 'x'}{m[2]},{m[3]},", text)
    if next_ip is not None:  # capstone prints rip-relative operands as a displacement
        text = re.sub(r"rip([+-]\d+)", lambda m: f"rip+{next_ip + int(m.group(1))}", text)
    return ALIASES.get(text, text)


def roundtrip(arch, asm: Assembly) -> list[str]:
    """Decode the assembled bytes with capstone and compare every instruction with its source line.

    Returns the disagreements (empty when keystone encoded exactly what the source says).
    """
    problems, addr = [], asm.base
    for stmt in asm.statements:
        directive = stmt.split()[0]
        if directive == ".balign":
            align = int(stmt.split()[1], 0)
            addr = (addr + align - 1) // align * align
            continue
        if directive == ".space":
            addr += int(stmt.split()[1], 0)
            continue
        if directive in (".quad", ".byte"):
            addr += (8 if directive == ".quad" else 1) * len(stmt.split(None, 1)[1].split(","))
            continue
        size, problem = check_instruction(arch, asm, addr, stmt)
        if problem:
            problems.append(problem)
        if size is None:
            break
        addr += size
    return problems


def check_instruction(arch, asm: Assembly, addr: int, stmt: str, symbols=None) -> tuple[int | None, str | None]:
    """The size of the instruction assembled from `stmt` at addr (None if nothing decodes there),
    and how capstone's reading of it disagrees with the source, if it does. `symbols` are the
    labels the source may name (default: all of the assembly's)."""
    off = addr - asm.base
    decoded = disassemble(arch, asm.code[off : off + 16], addr) if 0 <= off < len(asm.code) else []
    if not decoded:
        return None, f"{addr:#x}: '{stmt}' did not decode"
    _, size, text = decoded[0]
    if _normal(stmt, asm.symbols if symbols is None else symbols) != _normal(text, {}, addr + size):
        return size, f"{addr:#x}: source '{stmt}' assembled as '{text}'"
    return size, None
