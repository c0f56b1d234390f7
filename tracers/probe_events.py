"""Dynamic probe events: the kernel's kprobe_events / dynamic_events definitions, parsed and evaluated.

After kernel/trace/trace_kprobe.c, trace_fprobe.c, trace_probe.c and trace_probe_tmpl.h (the 6.14+
tree, where fprobe runs on fgraph) and Documentation/trace/{kprobetrace,fprobetrace}.rst:

    p[:[GRP/][EVENT]] [MOD:]SYM[+OFFS]|MEMADDR [FETCHARGS]    kprobe
    p[:[GRP/][EVENT]] [MOD:]SYM[+0]%return [FETCHARGS]       kretprobe
    r[MAXACTIVE][:[GRP/][EVENT]] [MOD:]SYM[+0] [FETCHARGS]   kretprobe
    f[:[GRP/][EVENT]] SYM[%return] [FETCHARGS]               fprobe on function entry / exit
    -:[GRP/][EVENT]                                          delete: parsed as kind '-'

FETCHARG is [NAME=]FETCH[:TYPE] with FETCH one of %REG $argN $retval $stackN $stack $comm @ADDR
@SYM[+|-OFFS] \\IMM \\"STR" +|-[u]OFFS(FETCH). Errors carry the kernel's error_log text and the
column (1-based, in the text as given) where the kernel puts its caret.

Where ftlab differs from the kernel (each on purpose):
  * There is no BTF: bare names, $arg* and $retval->field fail with the kernel's no-BTF message,
    and unnamed arguments are named argN (the kernel's name without BTF).
  * Types u8..u64, s8..s64, x8..x64, string and symbol. ustring, symstr, char, bitfields and
    arrays are valid in the kernel but are rejected here with a message saying so.
  * Stricter: text between the kind letter and ':' must be a MAXACTIVE (the kernel skips it), and
    text after a dereference's last ')' is an error (the kernel drops it). @SYM is checked when
    parsed (the kernel only resolves it at registration); uprobe and tracepoint specs are refused.
  * f[MAXACTIVE] is refused, as in 6.14+ (fprobe lost nr_maxactive when it moved onto fgraph).
  * A fault in a numeric fetch formats as (fault); the kernel leaves the ring-buffer slot
    unwritten, so it prints whatever stale bytes were there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, NoReturn, Protocol

from emulator.errors import FtlabError

U64 = (1 << 64) - 1
MAX_EVENT_NAME_LEN = 64       # a group or event name is at most 63 characters
MAX_ARG_NAME_LEN = 32
MAX_ARGSTR_LEN = 63           # one argument's text after NAME=, type included
MAX_TRACE_ARGS = 128
MAX_FETCH_OPS = 15            # FETCH_INSN_MAX (16) minus the END slot: %REG plus 14 derefs
MAX_STRING_SIZE = 4096        # PATH_MAX: a string reads at most 4095 bytes before its NUL
PARAM_MAX_STACK = 2048        # THREAD_SIZE / sizeof(long): 16 KiB stacks on x86_64 and arm64
KRETPROBE_MAXACTIVE_MAX = 4096
DEFAULT_TYPE = "x64"          # DEFAULT_FETCH_TYPE on 64-bit: x##BITS_PER_LONG
FAULT = "(fault)"             # evaluate()'s value for a fetch that faulted, printed as is
RESERVED_NAMES = frozenset({
    "common_type", "common_flags", "common_preempt_count", "common_pid", "common_tgid",
    "__probe_ip", "__probe_ret_ip", "__probe_func"})

# type -> (size in bytes, how it prints)
TYPES = {f"{k}{bits}": (bits // 8, k) for k in "usx" for bits in (8, 16, 32, 64)}
TYPES.update(string=(4, "string"), symbol=(8, "symbol"))
_KERNEL_ONLY_TYPES = {"ustring", "symstr", "char"}

# The kernel's error_log texts (kernel/trace/trace_probe.h ERRORS), spelling included.
BAD_MAXACT_TYPE = "Maxactive is only for function exit"
BAD_MAXACT = "Invalid maxactive number"
MAXACT_TOO_BIG = "Maxactive is too big"
BAD_PROBE_ADDR = "Invalid probed address or symbol"
BAD_RETPROBE = "Retprobe address must be an function entry"
BAD_ADDR_SUFFIX = "Invalid probed address suffix"
NO_GROUP_NAME = "Group name is not specified"
GROUP_TOO_LONG = "Group name is too long"
BAD_GROUP_NAME = "Group name must follow the same rules as C identifiers"
NO_EVENT_NAME = "Event name is not specified"
EVENT_TOO_LONG = "Event name is too long"
BAD_EVENT_NAME = "Event name must follow the same rules as C identifiers"
RETVAL_ON_PROBE = "$retval is not available on probe"
BAD_STACK_NUM = "Invalid stack number"
BAD_ARG_NUM = "Invalid argument number"
BAD_VAR = "Invalid $-valiable specified"
BAD_REG_NAME = "Invalid register name"
BAD_MEM_ADDR = "Invalid memory address"
BAD_IMM = "Invalid immediate value"
IMMSTR_NO_CLOSE = "String is not closed with '\"'"
FILE_ON_KPROBE = "File offset is not available with kprobe"
TOO_MANY_OPS = "Dereference is too much nested"
DEREF_NEED_BRACE = "Dereference needs a brace"
BAD_DEREF_OFFS = "Invalid dereference offset"
DEREF_OPEN_BRACE = "Dereference brace is not closed"
COMM_CANT_DEREF = "$comm can not be dereferenced"
BAD_FETCH_ARG = "Invalid fetch argument"
BAD_TYPE = "Unknown type is specified"
BAD_STRING = "String accepts only memory argument"
ARG_NAME_TOO_LONG = "Argument name is too long"
NO_ARG_NAME = "Argument name is not specified"
BAD_ARG_NAME = "Argument name must follow the same rules as C identifiers"
USED_ARG_NAME = "This argument name is already used"
ARG_TOO_LONG = "Argument expression is too long"
NO_ARG_BODY = "No argument expression"
NOSUP_BTFARG = "BTF is not available or not supported"
NOFENTRY_ARGS = "$arg* can be used only on function entry or exit"
NEED_STRING_TYPE = "$comm and immediate-string only accepts string type"
TOO_MANY_ARGS = "Too many arguments are specified"
# ftlab's own, where the kernel fails without an error_log line or accepts what ftlab does not model
EMPTY = "Empty probe definition"
BAD_KIND = "Unknown probe type (ftlab knows p, r, f and -)"
NO_SYMBOL = "Probe point (SYM or MEMADDR) is not specified"
NO_DELETE_TARGET = "'-:' needs [GRP/]EVENT and nothing after it"
NOT_MODELLED_TYPE = "Type is valid in the kernel but not modelled by ftlab"
NOT_MODELLED_UPROBE = "Uprobe events are not modelled by ftlab"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYSTEM_NAME = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]*")     # group names may also hold '-'
_KSYM = re.compile(r"(?:[A-Za-z0-9_]+:)?[A-Za-z_.][A-Za-z0-9_.$]*")
_FSYM = re.compile(r"(?:[A-Za-z0-9_]+:)?[A-Za-z_.*?][A-Za-z0-9_.$*?]*")   # fprobe takes a glob
_DIGITS = re.compile(r"[0-9]+")


class ProbeSpecError(FtlabError):
    """A malformed probe definition: the kernel's error_log text, the bad token and its column."""

    def __init__(self, spec: str, message: str, token: str | None = None, column: int | None = None):
        self.spec, self.message, self.token, self.column = spec, message, token, column
        where = "" if token is None else f": '{_printable(token)}' (column {column})"
        super().__init__(f"bad probe spec '{_printable(spec)}': {message}{where}")


class FetchFault(Exception):
    """Raised by FetchContext.read for memory the probe cannot read (copy_from_kernel_nofault)."""


@dataclass(frozen=True)
class Fetch:
    """One fetch: op is reg, arg, retval, stack, stackp, comm, imm, imm_str, mem (@ADDR), sym
    (@SYM+OFFS) or deref (+OFFS(inner)). mem, sym and deref read memory."""

    op: str
    value: int | str | None = None   # register name, N of $argN/$stackN, immediate, address, symbol, text
    offset: int = 0                  # deref offset, or @SYM's +/-OFFS
    inner: Fetch | None = None       # the deref's operand
    user: bool = False               # +uOFFS(...): a user-space dereference


@dataclass(frozen=True)
class FetchArg:
    name: str        # NAME= if given, else arg<position> (the kernel's name without BTF)
    fetch: Fetch
    type: str        # a key of TYPES


@dataclass(frozen=True)
class ProbeSpec:
    kind: str                   # 'p' kprobe, 'r' kretprobe, 'f' fprobe, '-' delete
    group: str                  # '-': '' for any group
    event: str                  # '-': '' for every event of the group
    symbol: str                 # '' for a MEMADDR kprobe and for '-'
    offset: int                 # p SYM+OFFS
    is_return: bool             # r, p SYM%return, f SYM%return (or f with $retval)
    maxactive: int | None       # r[MAXACTIVE]
    args: tuple[FetchArg, ...]
    text: str                   # the spec as given
    address: int | None = None  # p/r MEMADDR


class FetchContext(Protocol):
    """What evaluation reads; the tracer supplies it at a hit."""

    comm: str

    def register(self, name: str) -> int: ...
    def argument(self, n: int) -> int: ...      # 1-based; on a return probe, its value at entry
    def return_value(self) -> int: ...
    def stack(self, n: int) -> int: ...         # $stackN: the N-th word on the stack at the probe
    def stack_pointer(self) -> int: ...
    def read(self, addr: int, size: int) -> bytes: ...   # raises FetchFault if unreadable
    def address_of(self, symbol: str) -> int: ...
    def symbolize(self, addr: int) -> str: ...  # 'sym+0x10/0x40' as %pS prints it


# -- parsing ---------------------------------------------------------------------------------------

def parse(spec: str, registers: Iterable[str]) -> ProbeSpec:
    """Parse one dynamic_events line; registers are the names %REG may use (pt_regs members)."""
    return _Parser(spec, registers).parse()


@dataclass(frozen=True)
class _Where:
    """Where the arguments are fetched (the kernel's TPARG_FL_* flags)."""
    entry: bool      # function entry: $argN
    ret: bool        # function return: $retval, and $argN saved at entry
    fprobe: bool     # fprobe events take no %REG


class _Parser:
    def __init__(self, text: str, registers: Iterable[str]):
        self.text = text
        self.regs = frozenset(registers)
        # argv_split(): words separated by white space
        self.words = [(m.group(), m.start()) for m in re.finditer(r"\S+", text)]

    def fail(self, message: str, pos: int, token: str) -> NoReturn:
        raise ProbeSpecError(self.text, message, token, pos + 1)

    def parse(self) -> ProbeSpec:
        if not self.words:
            raise ProbeSpecError(self.text, EMPTY)
        head, hpos = self.words[0]
        kind = head[0]
        if kind == "-":
            return self._delete(head, hpos)
        if kind not in "prf":
            self.fail(BAD_KIND, hpos, head)
        if len(self.words) < 2:
            self.fail(NO_SYMBOL, hpos + len(head) + 1, head)
        colon = head.find(":")
        between = head[1:] if colon < 0 else head[1:colon]
        maxactive = self._maxactive(kind, between, hpos + 1)
        point = self._fprobe_point() if kind == "f" else self._kprobe_point(kind)
        symbol, offset, address, is_return, where = point

        group = "fprobes" if kind == "f" else "kprobes"
        event = None
        if colon >= 0:
            group, event = self._event_name(head[colon + 1:], hpos + colon + 1, group)
        if event is None:
            event = self._default_event(kind, symbol, offset, address, is_return)
        args = self._args(where)
        return ProbeSpec(kind, group, event, symbol, offset, is_return, maxactive, args,
                         self.text, address)

    def _maxactive(self, kind: str, text: str, pos: int) -> int | None:
        if not text:
            return None
        if kind == "f":          # 6.14+: fprobe events reject any MAXACTIVE
            self.fail(BAD_MAXACT, pos, text)
        if not text[0].isdigit():
            self.fail(BAD_MAXACT, pos, text)
        if kind == "p":          # checked before a %return suffix is seen, as in the kernel
            self.fail(BAD_MAXACT_TYPE, pos, text)
        value = _strtoull(text) if len(text) < MAX_EVENT_NAME_LEN else None
        if not value or value > 0xFFFFFFFF:     # kstrtouint; 0 is refused too
            self.fail(BAD_MAXACT, pos, text)
        if value > KRETPROBE_MAXACTIVE_MAX:
            self.fail(MAXACT_TOO_BIG, pos, text)
        return value

    def _kprobe_point(self, kind: str):
        word, pos = self.words[1]
        is_return = kind == "r"
        address = _strtoull(word)
        if address is not None:
            # The kernel sets neither FENTRY nor RETURN for an address: no $argN, and (a quirk)
            # no $retval even on r.
            return "", 0, address, is_return, _Where(entry=False, ret=False, fprobe=False)
        if "/" in word and ":" in word:
            self.fail(NOT_MODELLED_UPROBE, pos, word)
        symbol = self._return_suffix(word, pos)
        is_return = is_return or symbol != word
        offset = 0
        cut = min((i for i in (symbol.find("+"), symbol.find("-")) if i >= 0), default=-1)
        if cut >= 0:
            offset = _strtol(symbol[cut:])
            if offset is None or not 0 <= offset <= 0xFFFFFFFF:
                self.fail(BAD_PROBE_ADDR, pos, word)
            symbol = symbol[:cut]
        if not _KSYM.fullmatch(symbol):
            self.fail(BAD_PROBE_ADDR, pos, word)
        # kprobe_on_func_entry(): only offset 0 is the function entry (no IBT endbr64 allowance)
        if is_return and offset:
            self.fail(BAD_RETPROBE, pos, word)
        return symbol, offset, None, is_return, _Where(entry=not is_return and offset == 0,
                                                       ret=is_return, fprobe=False)

    def _fprobe_point(self):
        word, pos = self.words[1]
        symbol = self._return_suffix(word, pos)
        is_return = symbol != word
        if not is_return:
            # An fprobe whose arguments use $retval is an exit probe (parse_symbol_and_return()).
            is_return = any(re.search(r"\$retval(?![A-Za-z0-9_])", w) for w, _ in self.words[2:])
        if not _FSYM.fullmatch(symbol):      # SYM+OFFS included: fprobes sit on entry/exit only
            self.fail(BAD_PROBE_ADDR, pos, word)
        return symbol, 0, None, is_return, _Where(entry=not is_return, ret=is_return, fprobe=True)

    def _return_suffix(self, word: str, pos: int) -> str:
        pct = word.find("%")
        if pct < 0:
            return word
        if word[pct:] != "%return":
            self.fail(BAD_ADDR_SUFFIX, pos + pct, word[pct:])
        return word[:pct]

    def _event_name(self, text: str, pos: int, group: str) -> tuple[str, str | None]:
        """traceprobe_parse_event_name(): [GRP/][EVENT] (or GRP.EVENT); EVENT None: the default."""
        slash = text.find("/")
        if slash < 0:
            slash = text.find(".")
        if slash >= 0:
            name = text[:slash]
            if slash == 0:
                self.fail(NO_GROUP_NAME, pos, text)
            if slash + 1 > MAX_EVENT_NAME_LEN:
                self.fail(GROUP_TOO_LONG, pos, name)
            if not _SYSTEM_NAME.fullmatch(name):
                self.fail(BAD_GROUP_NAME, pos, name)
            group, pos, text = name, pos + slash + 1, text[slash + 1:]
            if not text:
                return group, None          # 'p:mygroup/ SYM': default event name in mygroup
        if not text:
            self.fail(NO_EVENT_NAME, pos, text)
        if len(text) >= MAX_EVENT_NAME_LEN:
            self.fail(EVENT_TOO_LONG, pos, text)
        if not _NAME.fullmatch(text):
            self.fail(BAD_EVENT_NAME, pos, text)
        return group, text

    @staticmethod
    def _default_event(kind, symbol, offset, address, is_return) -> str:
        if kind == "f":
            name = f"{symbol}__{'exit' if is_return else 'entry'}"
        elif address is not None:     # the kernel prints a hashed %p; the lab has no hashing
            name = f"{'r' if is_return else 'p'}_0x{address:016x}"
        else:
            name = f"{'r' if is_return else 'p'}_{symbol}_{offset}"
        name = name[:MAX_EVENT_NAME_LEN - 1]                  # snprintf into a 64-byte buffer
        # sanitize_event_name(): ':', '.' and '*' become '_' (it never looks at the first char)
        return name[:1] + re.sub(r"[:.*]", "_", name[1:])

    def _delete(self, head: str, hpos: int) -> ProbeSpec:
        if not head.startswith("-:") or len(self.words) > 1:
            self.fail(NO_DELETE_TARGET, hpos, head)
        group, _, event = head[2:].partition("/") if "/" in head else ("", "", head[2:])
        if not group and not event:
            self.fail(NO_EVENT_NAME, hpos + 2, head)
        return ProbeSpec("-", group, event, "", 0, False, None, (), self.text)

    # -- arguments ---------------------------------------------------------------------------------

    def _args(self, where: _Where) -> tuple[FetchArg, ...]:
        words = self.words[2:]
        if len(words) > MAX_TRACE_ARGS:
            self.fail(TOO_MANY_ARGS, words[0][1], words[0][0])
        for word, pos in words:     # traceprobe_expand_meta_args() looks at bare $arg words first
            if word.startswith("$arg"):
                if not (where.entry or where.ret):
                    self.fail(NOFENTRY_ARGS, pos, word)
                if word[4:5] == "*":
                    self.fail(NOSUP_BTFARG, pos, word)
                if not word[4:5].isdigit():
                    self.fail(BAD_VAR, pos, word)
        args: list[FetchArg] = []
        for i, (word, pos) in enumerate(words):
            args.append(self._arg(i, word, pos, where, {a.name for a in args}))
        return tuple(args)

    def _arg(self, i: int, word: str, pos: int, where: _Where, used: set[str]) -> FetchArg:
        eq = word.find("=")
        if eq >= 0:
            if eq > MAX_ARG_NAME_LEN:
                self.fail(ARG_NAME_TOO_LONG, pos, word[:eq])
            if eq == 0:
                self.fail(NO_ARG_NAME, pos, word)
            name, body, bpos = word[:eq], word[eq + 1:], pos + eq + 1
        else:
            name, body, bpos = f"arg{i + 1}", word, pos
        if not _NAME.fullmatch(name):
            self.fail(BAD_ARG_NAME, pos, name)
        if name in RESERVED_NAMES or name in used:
            self.fail(USED_ARG_NAME, pos, name)
        if len(body) > MAX_ARGSTR_LEN:
            self.fail(ARG_TOO_LONG, bpos, body)
        if not body:
            self.fail(NO_ARG_BODY, bpos, word)

        expr, type_name, tpos = body, None, bpos
        colon = body.find(":")
        if colon >= 0:
            expr, type_name, tpos = body[:colon], body[colon + 1:], bpos + colon + 1
        if expr in ("$comm", "$COMM") or expr.startswith('\\"'):
            if type_name not in (None, "string"):
                self.fail(NEED_STRING_TYPE, tpos, type_name)
            type_name = "string"
        type_ = self._type(type_name, tpos)
        fetch, _ = self._fetch(expr, bpos, where)
        # A string is read at an address: memory fetches (their last load becomes the string
        # read), an immediate address, $comm or an immediate string. Not a register or $argN.
        if type_ == "string" and fetch.op not in ("deref", "mem", "sym", "imm", "comm", "imm_str"):
            self.fail(BAD_STRING, tpos, type_name)
        return FetchArg(name, fetch, type_)

    def _type(self, name: str | None, pos: int) -> str:
        if name is None:
            return DEFAULT_TYPE
        if name in TYPES:
            return name
        base = name.split("[")[0]
        if "[" in name or base in _KERNEL_ONLY_TYPES or _is_bitfield(base):
            self.fail(NOT_MODELLED_TYPE, pos, name)
        self.fail(BAD_TYPE, pos, name)

    def _fetch(self, expr: str, pos: int, where: _Where) -> tuple[Fetch, int]:
        """parse_probe_arg(): the fetch and how many fetch_insn slots the kernel would use."""
        c = expr[:1]
        if c == "$":
            return self._var(expr, pos, where), 1
        if c == "%":
            if where.fprobe:       # the kernel's text for it, though no '$' is involved
                self.fail(BAD_VAR, pos, expr)
            if expr[1:] not in self.regs:
                self.fail(BAD_REG_NAME, pos, expr)
            return Fetch("reg", expr[1:]), 1
        if c == "@":
            if expr[1:2].isdigit():
                address = _strtoull(expr[1:])
                if address is None:
                    self.fail(BAD_MEM_ADDR, pos, expr)
                return Fetch("mem", address), 2          # IMM, DEREF
            if expr[1:2] == "+":
                self.fail(FILE_ON_KPROBE, pos, expr)
            symbol, offset = expr[1:], 0
            cut = min((i for i in (symbol.find("+"), symbol.find("-")) if i >= 0), default=-1)
            if cut >= 0:
                offset, symbol = _strtol(symbol[cut:]), symbol[:cut]
            if offset is None or not _KSYM.fullmatch(symbol):
                self.fail(BAD_MEM_ADDR, pos, expr)
            return Fetch("sym", symbol, offset), 3       # symbol holder, IMM, DEREF
        if c in "+-":
            return self._deref(expr, pos, where)
        if c == "\\":
            if expr[1:2] == '"':
                text = expr[2:]
                if not text.endswith('"'):
                    self.fail(IMMSTR_NO_CLOSE, pos + len(expr), expr)
                return Fetch("imm_str", text[:-1]), 1
            value = _str_to_immediate(expr[1:])
            if value is None:
                self.fail(BAD_IMM, pos + 1, expr[1:])
            return Fetch("imm", value & U64), 1
        if c.isascii() and (c.isalpha() or c == "_"):     # a BTF variable name
            self.fail(NOSUP_BTFARG, pos, expr)
        self.fail(BAD_FETCH_ARG, pos, expr)

    def _var(self, expr: str, pos: int, where: _Where) -> Fetch:
        var = expr[1:]
        if var.startswith("retval"):
            if not where.ret:
                self.fail(RETVAL_ON_PROBE, pos, expr)
            if var != "retval":        # $retval->field etc. need BTF
                self.fail(BAD_VAR, pos, expr)
            return Fetch("retval")
        if var.startswith("stack"):
            if var == "stack":
                return Fetch("stackp")
            n = _decimal(var[5:])
            if n is None:
                self.fail(BAD_VAR, pos, expr)
            if n > PARAM_MAX_STACK:
                self.fail(BAD_STACK_NUM, pos, expr)
            return Fetch("stack", n)
        if var in ("comm", "COMM"):
            return Fetch("comm")
        if var.startswith("arg"):
            n = _decimal(var[3:])
            if n is None:
                self.fail(BAD_VAR, pos, expr)
            if not 1 <= n <= PARAM_MAX_STACK:
                self.fail(BAD_ARG_NUM, pos, expr)
            if not (where.entry or where.ret):
                self.fail(NOFENTRY_ARGS, pos, expr)
            return Fetch("arg", n)
        self.fail(BAD_VAR, pos, expr)

    def _deref(self, expr: str, pos: int, where: _Where) -> tuple[Fetch, int]:
        user = expr[1:2] == "u"
        paren = expr.find("(")
        if paren < 0:
            self.fail(DEREF_NEED_BRACE, pos, expr)
        digits = expr[2 if user else 1:paren]
        offset = _strtol("-" + digits if expr[0] == "-" else digits)
        if offset is None:
            self.fail(BAD_DEREF_OFFS, pos, expr[:paren])
        close = expr.rfind(")")
        if close < paren:
            self.fail(DEREF_OPEN_BRACE, pos + len(expr), expr)
        if close != len(expr) - 1:
            self.fail(BAD_FETCH_ARG, pos + close + 1, expr[close + 1:])
        inner_pos = pos + paren + 1
        inner, slots = self._fetch(expr[paren + 1:close], inner_pos, where)
        if inner.op in ("comm", "imm_str"):
            self.fail(COMM_CANT_DEREF, inner_pos, expr[paren + 1:close])
        if slots + 1 > MAX_FETCH_OPS:
            self.fail(TOO_MANY_OPS, inner_pos, expr)
        return Fetch("deref", None, offset, inner, user), slots + 1


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _is_bitfield(name: str) -> bool:
    """find_fetch_type()'s bitfield: b<width>@<offset>/<container 8|16|32|64>."""
    return bool(re.fullmatch(r"b[^/]*/(?:8|16|32|64)", name))


def _strtoull(s: str) -> int | None:
    """kstrtoull(s, 0): 0x.. hex, 0.. octal, else decimal; a leading '+'; None if not a number."""
    if s.startswith("+"):
        s = s[1:]
    return _strtoull_noplus(s)


def _strtoull_noplus(s: str) -> int | None:
    base = 10
    if s.startswith("0"):
        if s[1:2] in ("x", "X") and re.match(r"[0-9a-fA-F]", s[2:3]):
            base, s = 16, s[2:]
        else:
            base = 8
    digits = {10: "0-9", 8: "0-7", 16: "0-9a-fA-F"}[base]
    if not re.fullmatch(f"[{digits}]+", s):
        return None
    value = int(s, base)
    return value if value <= U64 else None


def _strtol(s: str) -> int | None:
    """kstrtol(s, 0): a signed long."""
    if s.startswith("-"):
        value = _strtoull_noplus(s[1:])
        return None if value is None or value > 1 << 63 else -value
    value = _strtoull(s)
    return None if value is None or value >= 1 << 63 else value


def _str_to_immediate(s: str) -> int | None:
    if s[:1].isdigit():
        return _strtoull(s)
    if s[:1] == "-":
        return _strtol(s)
    if s[:1] == "+":
        return _strtol(s[1:])
    return None


def _decimal(s: str) -> int | None:
    """kstrtoul(s, 10) on what follows $argN / $stackN."""
    if not _DIGITS.fullmatch(s):
        return None
    value = int(s)
    return value if value <= U64 else None


# -- evaluation -----------------------------------------------------------------------------------

def evaluate(arg: FetchArg, ctx: FetchContext) -> int | bytes | str:
    """The value the kernel would record: an int already truncated (u, x) or sign-extended (s) to
    the type; bytes for string (up to its NUL); the ctx's %pS text for symbol; FAULT on a fault."""
    size, kind = TYPES[arg.type]
    f = arg.fetch
    try:
        if kind == "string":
            return _string(f, ctx)
        if f.op in ("deref", "mem", "sym"):      # the last load reads just the type's size
            raw = int.from_bytes(_read(ctx, _address(f, ctx), size), "little")
        else:
            raw = _value(f, ctx)
    except FetchFault:
        return FAULT
    if kind == "symbol":
        return ctx.symbolize(raw & U64)
    return _convert(raw, arg.type)


def format_value(arg: FetchArg, value) -> str:
    """One value as the kernel's print functions show it: %u, %d, 0x%x, \"%s\", %pS."""
    if isinstance(value, str) and value == FAULT:
        return FAULT
    size, kind = TYPES[arg.type]
    if kind == "string":
        # trace_seq prints the bytes as they are; shown here as UTF-8
        return '"' + bytes(value).decode("utf-8", "backslashreplace") + '"'
    if kind == "symbol":
        return value if isinstance(value, str) else f"0x{value & U64:x}"   # %pS with no symbol
    value = _convert(value, arg.type)
    return f"0x{value:x}" if kind == "x" else str(value)


def format_args(args: Iterable[FetchArg], values: Iterable) -> str:
    """' name=value ...' as trace_probe_print_args() appends them to an event line."""
    return "".join(f" {a.name}={format_value(a, v)}" for a, v in zip(args, values, strict=True))


def _convert(value: int, type_: str) -> int:
    size, kind = TYPES[type_]
    bits = 8 * size
    value &= (1 << bits) - 1
    if kind == "s" and value >> (bits - 1):
        value -= 1 << bits
    return value


def _value(f: Fetch, ctx: FetchContext) -> int:
    """The unsigned long a fetch produces (a memory fetch loads a whole word)."""
    if f.op == "reg":
        value = ctx.register(f.value)
    elif f.op == "arg":
        value = ctx.argument(f.value)
    elif f.op == "retval":
        value = ctx.return_value()
    elif f.op == "stack":
        value = ctx.stack(f.value)
    elif f.op == "stackp":
        value = ctx.stack_pointer()
    elif f.op == "imm":
        value = f.value
    elif f.op in ("deref", "mem", "sym"):
        value = int.from_bytes(_read(ctx, _address(f, ctx), 8), "little")
    else:
        raise ValueError(f"{f.op} has no numeric value")    # comm, imm_str: string-only
    return value & U64


def _address(f: Fetch, ctx: FetchContext) -> int:
    """The address a memory fetch reads."""
    if f.op == "deref":
        return (_value(f.inner, ctx) + f.offset) & U64
    if f.op == "mem":
        return f.value
    return (ctx.address_of(f.value) + f.offset) & U64


def _read(ctx: FetchContext, addr: int, size: int) -> bytes:
    data = ctx.read(addr, size)
    if len(data) != size:
        raise FetchFault(f"short read at {addr:#x}")
    return data


def _string(f: Fetch, ctx: FetchContext) -> bytes:
    if f.op == "comm":
        return ctx.comm.encode()
    if f.op == "imm_str":
        return f.value.encode()
    addr = f.value if f.op == "imm" else _address(f, ctx)
    return _read_string(ctx, addr)


def _read_string(ctx: FetchContext, addr: int) -> bytes:
    """strncpy_from_kernel_nofault(): up to the NUL or MAX_STRING_SIZE - 1 bytes; any fault on
    the way (before the NUL) faults the whole string."""
    out = bytearray()
    limit = MAX_STRING_SIZE - 1
    while len(out) < limit:
        a = (addr + len(out)) & U64
        n = min(limit - len(out), 4096 - a % 4096)      # read a page at a time
        try:
            chunk = _read(ctx, a, n)
        except FetchFault:
            chunk = b""                                   # the NUL may come before the fault
            while len(chunk) < n and not chunk.endswith(b"\0"):
                chunk += _read(ctx, (a + len(chunk)) & U64, 1)
        nul = chunk.find(b"\0")
        if nul >= 0:
            return bytes(out + chunk[:nul])
        out += chunk
    return bytes(out)
