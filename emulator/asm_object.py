"""Hand-written test functions: an assembly source (.S) loaded as an object, as a compiler's would be.

The source is what `gcc -S` writes (Intel syntax on x86_64, as `-masm=intel` writes it), read by
emulator.asm's preprocessor (comments, `.include`, `.macro`, `.irp`) and assembled by keystone
with the capstone round trip. Keystone has no sections, so they are laid out here: every
statement goes to its section (`.text`, `.data`, `.rodata`, `.bss` and their `.NAME` suffixes, and
the patch-site tables `__mcount_loc` and `__patchable_function_entries`, through `.section`,
`.pushsection`/`.popsection`, `.previous`), the sections are assembled as one stream at the address
the object is mapped at, text first, and the symbols come from what the author wrote: `.type NAME,
@function` (or `%function`, `@object`) with `.size NAME, .-NAME`. The patch sites are the author's
too: a `call __fentry__` (or the 5-byte NOP) listed in `__mcount_loc`, two NOPs listed in
`__patchable_function_entries`, as the compilers emit them; ftrace reads them as it reads an
object's. Names the file does not define resolve against the machine's symbols (`call memcpy`,
`bl memcpy`, `__fentry__`), and the places that use them are the object's imports.

A directive outside that subset is a one-line error naming file:line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import asm
from .elf import LoadedObject
from .errors import FtlabError
from .symbols import Symbol

# Section names (and `NAME.suffix` ones) the lab lays out: executable or not.
SECTIONS = {".text": True, ".rodata": False, ".data": False, ".bss": False}
SITE_TABLES = ("__mcount_loc", "__patchable_function_entries")
IGNORED_SECTIONS = (".note.GNU-stack",)  # gcc's marker that the stack is not executable: no contents
SWITCHES = (".text", ".data", ".bss")
IGNORED = (".file", ".ident", ".arch", ".globl", ".global")  # .globl: the loader keeps local symbols too
ALIGNMENT = (".p2align", ".balign", ".align")
DATA = (
    ".byte", ".short", ".2byte", ".hword", ".long", ".int", ".4byte", ".word", ".quad", ".8byte", ".xword",
    ".ascii", ".asciz", ".string", ".zero", ".space", ".skip",
)  # fmt: skip
ADDRESSES = {".quad": 8, ".8byte": 8, ".xword": 8}  # the data that may name a symbol (an import's place)
LABEL = re.compile(r"^([A-Za-z_.$][\w.$]*|\d+):\s*(.*)$")
LOCAL_REF = re.compile(r"(?<![\w.$])(\d+)([bf])(?![\w.$])")  # GNU as numeric labels: 1b, 1f
OPERATOR = re.compile(r"#?:(\w+):([A-Za-z_.$][\w.$]*)")  # arm64 relocation operators: :lo12:sym
# Encoded here (see _operators): adrp xN, sym; b/bl to a symbol outside the file (arm64 mnemonics)
ADRP = re.compile(r"^adrp\s+x(\d+)\s*,\s*([A-Za-z_.$][\w.$]*)$")
BRANCH = re.compile(r"^(bl?)\s+([A-Za-z_][\w.$]*)$")
BRANCH_OPS = {"b": 0x14000000, "bl": 0x94000000}
LITERAL = re.compile(r"^ldr\s+(\w+)\s*,\s*=\s*([A-Za-z_.$][\w.$]*)$")  # ldr xN, =sym: a literal pool entry
TYPES = {"@function": "func", "%function": "func", "@object": "object", "%object": "object"}
STMT = "Lftlab_s"  # the label put before every statement: keystone reports where each one went
DOT_NAME = re.compile(r"(?<![\w.$])\.[A-Za-z_$][\w.$]*")  # .L1: keystone refuses it in an x86 memory operand


@dataclass
class _Statement:
    text: str  # as keystone gets it
    where: str  # file:line
    externals: tuple[str, ...] = ()


@dataclass
class _Section:
    name: str
    executable: bool
    lines: list[str | _Statement] = field(default_factory=list)  # labels (str) and statements


class _Source:
    """The statements of a .S file, sorted into sections, with its symbols' types and sizes."""

    def __init__(self, machine, path: Path):
        self.m, self.path = machine, path
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise FtlabError(f"{path}: {getattr(err, 'strerror', None) or err}") from None
        plain = re.sub(r"/\*.*?\*/", "", text)  # one-line comments (a longer one shifts nothing here)
        self.raw = [" ".join(line.split("//", 1)[0].split()) for line in plain.splitlines()]
        self.cursor = 0  # the line the last statement was found at: statements come in order
        self.sections: dict[str, _Section] = {}
        self.labels: dict[str, str] = {}  # label -> section
        self.types: dict[str, tuple[str, str]] = {}  # name -> (func/object, where)
        self.sizes: dict[str, str | int] = {}  # name -> the label ending it, or a number
        self.current = self.previous = ".text"
        self.stack: list[tuple[str, str, str]] = []  # (current, previous, the section pushed)
        self.numbered: dict[str, int] = {}  # numeric label -> how many defined so far
        self.markers = 0  # .size markers
        for stmt in asm.preprocess(text, path.parent, str(path)):
            self.statement(stmt, self.where(stmt))
        if self.stack:
            raise FtlabError(f"{path}: .pushsection {self.stack[-1][2]} without .popsection")
        for name, (_, where) in self.types.items():
            if name not in self.labels:
                raise FtlabError(f"{where}: '.type {name}' names no label of the file")

    def where(self, stmt: str) -> str:
        """file:line of a statement: the next line that reads so (a macro's expansion has none)."""
        plain = " ".join(stmt.split())
        order = [*range(self.cursor, len(self.raw)), *range(self.cursor)]
        line = next((n for n in order if self.raw[n] == plain), None)
        if line is None:
            return str(self.path)
        self.cursor = line + 1
        return f"{self.path}:{line + 1}"

    def fail(self, where: str, what: str):
        raise FtlabError(f"{where}: {what}")

    def statement(self, stmt: str, where: str) -> None:
        while m := LABEL.match(stmt):
            self.label(m.group(1), where)
            stmt = m.group(2)
            if not stmt:
                return
        stmt = LOCAL_REF.sub(lambda m: self.numeric(m.group(1), m.group(2), where), stmt)
        word, rest = (stmt.split(None, 1) + [""])[:2]
        if word in SWITCHES:
            self.switch(word)
        elif word in (".section", ".pushsection"):
            name = rest.split(",")[0].strip().strip('"')
            if word == ".pushsection":
                self.stack.append((self.current, self.previous, name))
            self.switch(name, where)
        elif word == ".popsection":
            if not self.stack:
                self.fail(where, ".popsection without .pushsection")
            self.current, self.previous, _ = self.stack.pop()
        elif word == ".previous":
            self.current, self.previous = self.previous, self.current
        elif word == ".type":
            name, _, kind = (p.strip() for p in rest.partition(","))
            if kind not in TYPES:
                self.fail(where, f"'.type {rest}': the type is @function or @object (%function, %object)")
            self.types[name] = (TYPES[kind], where)
        elif word == ".size":
            self.size(rest, where)
        elif word == ".att_syntax" or (word == ".intel_syntax" and rest != "noprefix"):
            self.fail(where, "only '.intel_syntax noprefix' is supported (what gcc -S -masm=intel writes)")
        elif word == ".intel_syntax":
            pass  # keystone's own syntax
        elif word in IGNORED:
            pass
        elif self.current in IGNORED_SECTIONS:
            self.fail(where, f"'{stmt}' in {self.current}, which holds nothing")
        elif word.startswith(".") and word not in ALIGNMENT + DATA + (".ltorg",):
            self.fail(where, f"unsupported directive '{word}' (see emulator/asm_object.py for the subset)")
        else:
            self.emit(stmt, word, where)

    def switch(self, name: str, where: str = "") -> None:
        if name not in IGNORED_SECTIONS and self.kind(name) is None:
            known = ", ".join([*SECTIONS, *SITE_TABLES])
            self.fail(where, f"section '{name}' is not supported (the lab lays out {known}, and .text.* and so on)")
        self.current, self.previous = name, self.current

    @staticmethod
    def kind(name: str) -> bool | None:
        """Whether a section the lab lays out is executable (None: not one it lays out)."""
        if name in SITE_TABLES:
            return False
        return next((x for s, x in SECTIONS.items() if name == s or name.startswith(s + ".")), None)

    def section(self) -> _Section:
        sec = self.sections.get(self.current)
        if sec is None:
            sec = self.sections[self.current] = _Section(self.current, bool(self.kind(self.current)))
        return sec

    def label(self, name: str, where: str) -> None:
        if name.isdigit():
            n = self.numbered.get(name, 0)
            self.numbered[name] = n + 1
            name = f"Lftlab_{name}_{n}"
        elif name in self.labels:
            self.fail(where, f"symbol '{name}' is already defined")
        if self.current in IGNORED_SECTIONS:
            self.fail(where, f"label '{name}' in {self.current}, which holds nothing")
        self.labels[name] = self.current
        self.section().lines.append(name)

    def numeric(self, n: str, direction: str, where: str) -> str:
        count = self.numbered.get(n, 0)
        if direction == "b" and not count:
            self.fail(where, f"'{n}b' refers back to a label {n}: that is not defined before it")
        return f"Lftlab_{n}_{count - 1 if direction == 'b' else count}"

    def size(self, rest: str, where: str) -> None:
        name, _, expr = (p.strip() for p in rest.partition(","))
        if re.fullmatch(r"\.\s*-\s*" + re.escape(name), expr):
            if self.labels.get(name, self.current) != self.current:
                self.fail(where, f"'.size {rest}' in {self.current}, but {name} is in {self.labels[name]}")
            marker = f"Lftlab_size{self.markers}"
            self.markers += 1
            self.section().lines.append(marker)
            self.labels[marker] = self.current
            self.sizes[name] = marker
        elif re.fullmatch(r"\d+|0x[0-9a-fA-F]+", expr):
            self.sizes[name] = int(expr, 0)
        else:
            self.fail(where, f"'.size {rest}': the size is '.-{name}' or a number")

    def emit(self, stmt: str, word: str, where: str) -> None:
        sec = self.section()
        instruction = not word.startswith(".")
        if instruction and not sec.executable:
            self.fail(where, f"instruction '{stmt}' in {sec.name}, which is not executable")
        if sec.name in SITE_TABLES and word not in ALIGNMENT + tuple(ADDRESSES):
            self.fail(where, f"'{stmt}' in {sec.name}: a site table holds only addresses (.quad LABEL)")
        if sec.name.startswith(".bss") and word not in ALIGNMENT + (".zero", ".space", ".skip"):
            self.fail(where, f"'{stmt}' in {sec.name}: .bss holds only .zero/.space/.skip")
        operands = (stmt.split(None, 1) + [""])[1] if instruction or word in ADDRESSES else ""
        names = tuple(dict.fromkeys(m.group() for m in asm.NAME.finditer(asm.STRING.sub('""', operands))))
        sec.lines.append(_Statement(stmt, where, names))


@dataclass(frozen=True)
class _Image:
    assembly: asm.Assembly
    statements: dict[str, _Statement]  # statement label -> statement
    bounds: dict[str, tuple[int, int]]  # section -> (start, end)


def load_assembly(machine, path: Path, stubs=()) -> LoadedObject:
    """Assemble a .S file into a freshly mapped object: its sections, functions and imports."""
    if stubs:
        raise FtlabError(f"{path}: --stub is for ELF objects; define what {path.name} needs in it")
    src = _Source(machine, path)
    externals = _externals(src)
    first = _assemble(src, externals, 0)  # where everything goes, relative to the base
    size = max((end for _, end in first.bounds.values()), default=0)
    if not size:
        raise FtlabError(f"{path}: no code or data")
    base = machine.map_object(size)
    image = _assemble(src, externals, base)
    moved = {k for k, v in first.assembly.symbols.items() if v + base != image.assembly.symbols[k]}
    if moved:
        raise FtlabError(f"{path}: the layout changed between keystone's passes at {min(moved)}")
    _roundtrip(machine, src, image, externals)
    obj = LoadedObject(path, base, size)
    for name, (start, end) in image.bounds.items():
        obj.sections.setdefault(name, []).append((start, end - start))
        if src.sections[name].executable and end > start:
            machine.mark_executable(start, end - start)
            obj.text.append((start, end - start))
    machine.write_code(base, image.assembly.code)  # fresh memory: one write, one cache flush
    _symbols(machine, src, image, obj)
    _imports(machine, image, externals, obj)
    return obj


def _externals(src: _Source) -> dict[str, int]:
    """The names the file uses and does not define that the machine's symbols do, with addresses."""
    found = {}
    for sec in src.sections.values():
        for line in sec.lines:
            if isinstance(line, _Statement):
                for name in line.externals:
                    sym = src.m.symbols.get(name)
                    if name not in src.labels and sym is not None:
                        found[name] = sym.addr
    return found


def _assemble(src: _Source, externals: dict[str, int], base: int, symbols=None) -> _Image:
    """Every section in one keystone stream at base, text first, each between labels, and every
    statement after a label of its own."""
    order = sorted(src.sections.values(), key=lambda s: not s.executable)
    lines = [f".equ {name}, {addr:#x}" for name, addr in externals.items()]
    statements: dict[str, _Statement] = {}
    for i, sec in enumerate(order):
        lines += [".balign 16", f"Lftlab_start{i}:"]
        for line in sec.lines:
            if isinstance(line, str):
                lines.append(f"{_safe(line)}:")
                continue
            label = f"{STMT}{len(statements)}"
            statements[label] = line
            lines += [f"{label}:", _operators(src, line, symbols, label)]
        if sec.executable and any(LITERAL.match(s.text) for s in statements.values()):
            lines.append(".ltorg")  # the literal pool of ldr xN, =sym stays in the text
        lines.append(f"Lftlab_end{i}_:")
    assembly = asm.assemble_statements(src.m.arch, lines, base, str(src.path))
    syms = assembly.symbols
    bounds = {sec.name: (syms[f"Lftlab_start{i}"], syms[f"Lftlab_end{i}_"]) for i, sec in enumerate(order)}
    if symbols is None and any(OPERATOR.search(s.text) or _by_hand(src, s.text) for s in statements.values()):
        return _assemble(src, externals, base, {**syms, **externals})  # they need the addresses
    return _Image(assembly, statements, bounds)


def _safe(label: str) -> str:
    """A label keystone takes everywhere: `.L1` becomes `Lftlab.L1`."""
    return f"Lftlab{label}" if label.startswith(".") else label


def _operators(src: _Source, stmt: _Statement, symbols, label: str | None = None) -> str:
    """A statement as keystone gets it: the file's `.L` labels made safe; arm64's `:lo12:sym` as
    the number it is (keystone 0.9.2 aborts the process on the operator); and, at `label`, an
    `adrp xN, sym` or a `b`/`bl` out of the file as its encoding (_by_hand). All are 0 until the
    addresses are known (`symbols`). Any other operator is refused."""
    symbols = symbols or {}

    def address(name: str) -> int:
        if name not in src.labels and name not in src.m.symbols:
            src.fail(stmt.where, f"undefined symbol '{name}'")
        return symbols.get(_safe(name), 0)

    def value(m):
        if m.group(1) != "lo12":
            src.fail(stmt.where, f"relocation operator ':{m.group(1)}:' is not supported (:lo12: is)")
        return f"#{address(m.group(2)) & 0xFFF}"

    adrp, branch = ADRP.match(stmt.text), _by_hand(src, stmt.text)
    if branch and label is not None and branch.re is BRANCH:
        offset = address(branch.group(2)) - symbols.get(label, 0)  # out of reach, it wraps: the round trip says
        return f".long {BRANCH_OPS[branch.group(1)] | offset >> 2 & 0x3FFFFFF:#x}"
    if adrp and label is not None:
        pages = (address(adrp.group(2)) >> 12) - (symbols.get(label, 0) >> 12)
        return f".long {0x90000000 | (pages & 3) << 29 | (pages >> 2 & 0x7FFFF) << 5 | int(adrp.group(1)):#x}"
    text = OPERATOR.sub(value, stmt.text)
    return DOT_NAME.sub(lambda m: _safe(m.group()) if m.group() in src.labels else m.group(), text)


def _by_hand(src: _Source, text: str):
    """The match of a statement keystone 0.9.2 encodes wrongly: adrp from a non-zero base (its page
    is off), and a b/bl to a symbol outside the file (it takes the PC from the alignment fragment's
    start): both are encoded here, and capstone checks them."""
    branch = BRANCH.match(text)
    return ADRP.match(text) or (branch if branch and branch.group(2) not in src.labels else None)


def _roundtrip(machine, src: _Source, image: _Image, externals: dict[str, int]) -> None:
    """Capstone's reading of every instruction against its source line (asm.check_instruction);
    an `ldr xN, =sym` must be a literal load of a pool entry holding sym. Data directives are
    keystone's alone, as in the lab's own code."""
    a = image.assembly
    names = {k: v for k, v in a.symbols.items() if not k.startswith(STMT)} | externals
    for label, stmt in image.statements.items():
        if stmt.text.startswith("."):
            continue
        addr, text = a.symbols[label], _operators(src, stmt, names)
        adrp, literal = ADRP.match(text), LITERAL.match(text)
        if adrp:  # capstone prints the page
            text = f"adrp x{adrp.group(1)}, {names[_safe(adrp.group(2))] & ~0xFFF}"
        if literal:
            insn = asm.decode(machine.arch, a.code[addr - a.base : addr - a.base + 4], addr)
            pool = insn.operands[1].imm if insn and len(insn.operands) > 1 else None
            held = int.from_bytes(a.code[pool - a.base : pool - a.base + 8], "little") if pool else None
            want = names.get(_safe(literal.group(2)))
            if insn is None or insn.mnemonic != "ldr" or held != want:
                raise FtlabError(f"{stmt.where}: keystone assembled '{stmt.text}' as something else")
            continue
        _, problem = asm.check_instruction(machine.arch, a, addr, text, names)
        if problem:
            raise FtlabError(f"{stmt.where}: keystone mis-encoded it: {problem}")


def _symbols(machine, src: _Source, image: _Image, obj: LoadedObject) -> None:
    """The `.type`d labels as the symbol table would have them: functions need their `.size`."""
    syms = image.assembly.symbols
    for name, (kind, where) in src.types.items():
        size = src.sizes.get(name, 0 if kind == "object" else None)
        if size is None:
            raise FtlabError(f"{where}: function '{name}' has no '.size {name}, .-{name}'")
        addr = syms[_safe(name)]
        size = syms[size] - addr if isinstance(size, str) else size
        symbol = Symbol(name, addr, size, kind, src.labels[name])
        machine.symbols.add(symbol)
        if kind == "func":
            obj.functions.append(symbol)


def _imports(machine, image: _Image, externals: dict[str, int], obj: LoadedObject) -> None:
    """Where each machine symbol is used, as an ELF object's relocations would say: the field of
    the instruction holding it (x86: the displacement or immediate that resolves to it; arm64: the
    instruction), or the `.quad` holding it."""
    a = image.assembly
    for label, stmt in image.statements.items():
        addr = a.symbols[label]
        for name in (n for n in stmt.externals if n in externals):
            word, operands = (stmt.text.split(None, 1) + [""])[:2]
            if word in ADDRESSES:
                items = [o.strip() for o in operands.split(",")]
                places = [addr + ADDRESSES[word] * i for i, o in enumerate(items) if name in asm.NAME.findall(o)]
            else:
                places = [_field(machine, a, addr, externals[name])]
            obj.imports.setdefault(name, []).extend(places)


def _field(machine, a: asm.Assembly, addr: int, target: int) -> int:
    insn = asm.decode(machine.arch, a.code[addr - a.base : addr - a.base + 16], addr)
    for off in sorted(asm.field_offsets(insn)):
        raw = a.code[addr - a.base + off : addr - a.base + off + 4]
        value = int.from_bytes(raw, "little", signed=True)
        if target in (value & 0xFFFFFFFF, (addr + insn.size + value) & (1 << 64) - 1):
            return addr + off
    return addr
