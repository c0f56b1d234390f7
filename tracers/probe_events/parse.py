"""Parsing dynamic probe events: the kernel's kprobe_events / dynamic_events definitions.

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
  * BTF is what the caller passes (`btf`: function name -> BtfProto; the lab reads it from the
    object's DWARF). Without it (None), bare names, $arg* and $retval->field fail with the
    kernel's no-BTF message and unnamed arguments are named argN. With it, as trace_probe.c
    (v6.17) does with CONFIG_PROBE_EVENTS_BTF_ARGS: a parameter's name fetches it, typed by BTF;
    `$arg*` and every bare `$argN` are expanded to the parameters' names
    (traceprobe_expand_meta_args); `$retval` takes the return type; an unnamed argument that is a
    C identifier is named by its own text (generate_probe_arg_name). Struct members (`->`) and the
    string type on a BTF variable are refused with a message saying they are not modelled.
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from .spec import (
    _KERNEL_ONLY_TYPES,
    ARG_NAME_TOO_LONG,
    ARG_TOO_LONG,
    BAD_ADDR_SUFFIX,
    BAD_ARG_NAME,
    BAD_ARG_NUM,
    BAD_DEREF_OFFS,
    BAD_EVENT_NAME,
    BAD_FETCH_ARG,
    BAD_GROUP_NAME,
    BAD_HYPHEN,
    BAD_IMM,
    BAD_KIND,
    BAD_MAXACT,
    BAD_MAXACT_TYPE,
    BAD_MEM_ADDR,
    BAD_PROBE_ADDR,
    BAD_REG_NAME,
    BAD_RETPROBE,
    BAD_STACK_NUM,
    BAD_STRING,
    BAD_TYPE,
    BAD_VAR,
    COMM_CANT_DEREF,
    DEFAULT_TYPE,
    DEREF_NEED_BRACE,
    DEREF_OPEN_BRACE,
    DOUBLE_ARGS,
    EMPTY,
    EVENT_TOO_LONG,
    FILE_ON_KPROBE,
    GROUP_TOO_LONG,
    IMMSTR_NO_CLOSE,
    KRETPROBE_MAXACTIVE_MAX,
    MAX_ARG_NAME_LEN,
    MAX_ARGSTR_LEN,
    MAX_EVENT_NAME_LEN,
    MAX_FETCH_OPS,
    MAX_FPROBE_DATA_WORDS,
    MAX_TRACE_ARGS,
    MAXACT_TOO_BIG,
    NEED_STRING_TYPE,
    NO_ARG_BODY,
    NO_ARG_NAME,
    NO_BTF_ENTRY,
    NO_BTFARG,
    NO_DELETE_TARGET,
    NO_EVENT_NAME,
    NO_GROUP_NAME,
    NO_RETVAL,
    NO_SYMBOL,
    NOFENTRY_ARGS,
    NOSUP_BTFARG,
    NOSUP_DAT_ARG,
    NOT_MODELLED_BTF,
    NOT_MODELLED_TYPE,
    NOT_MODELLED_UPROBE,
    PARAM_MAX_STACK,
    RESERVED_NAMES,
    RETVAL_ON_PROBE,
    TOO_MANY_ARGS,
    TOO_MANY_EARGS,
    TOO_MANY_OPS,
    TYPES,
    U64,
    USED_ARG_NAME,
    BtfProto,
    Fetch,
    FetchArg,
    ProbeSpec,
    ProbeSpecError,
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYSTEM_NAME = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]*")  # group names may also hold '-'
_KSYM = re.compile(r"(?:[A-Za-z0-9_]+:)?[A-Za-z_.][A-Za-z0-9_.$]*")
_FSYM = re.compile(r"(?:[A-Za-z0-9_]+:)?[A-Za-z_.*?][A-Za-z0-9_.$*?]*")  # fprobe takes a glob
_DIGITS = re.compile(r"[0-9]+")


def parse(
    spec: str, registers: Iterable[str], on_func_entry=None, btf: Mapping[str, BtfProto] | None = None
) -> ProbeSpec:
    """Parse one dynamic_events line; registers are the names %REG may use (pt_regs members).
    on_func_entry(symbol, offset) is kprobe_on_func_entry(): True, False, or None for an unknown
    symbol; without one, only offset 0 is the entry (the kernel's __weak arch_adjust_kprobe_addr).
    btf maps a function's name to its prototype (None: the kernel has no BTF)."""
    return _Parser(spec, registers, on_func_entry or (lambda symbol, offset: offset == 0), btf).parse()


@dataclass(frozen=True)
class _Where:
    """Where the arguments are fetched (the kernel's TPARG_FL_* flags)."""

    entry: bool  # function entry: $argN
    ret: bool  # function return: $retval, and $argN saved at entry
    fprobe: bool  # fprobe events take no %REG


class _Parser:
    def __init__(self, text: str, registers: Iterable[str], on_func_entry, btf: Mapping[str, BtfProto] | None):
        self.text = text
        self.regs = frozenset(registers)
        self.on_func_entry = on_func_entry
        self.btf = btf
        self.symbol = ""
        # ctx->last_type: whether the argument being parsed is a BTF variable, and its fetch type
        self.btf_var: bool = False
        self.btf_type: str | None = None
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
        self.symbol = symbol

        group = "fprobes" if kind == "f" else "kprobes"
        event = None
        if colon >= 0:
            group, event = self._event_name(head[colon + 1 :], hpos + colon + 1, group)
        if event is None:
            event = self._default_event(kind, symbol, offset, address, is_return)
        args = self._args(where)
        spec = ProbeSpec(kind, group, event, symbol, offset, is_return, maxactive, args, self.text, address)
        if kind == "f" and len(spec.entry_args) > MAX_FPROBE_DATA_WORDS:
            # trace_fprobe_create_internal (db5e228611b1, 6.14): the entry data must fit an fprobe's
            self.fail(TOO_MANY_EARGS, self.words[2][1], self.words[2][0])
        return spec

    def _maxactive(self, kind: str, text: str, pos: int) -> int | None:
        if not text:
            return None
        if kind == "f":  # 6.14+: fprobe events reject any MAXACTIVE
            self.fail(BAD_MAXACT, pos, text)
        if not text[0].isdigit():
            self.fail(BAD_MAXACT, pos, text)
        if kind == "p":  # checked before a %return suffix is seen, as in the kernel
            self.fail(BAD_MAXACT_TYPE, pos, text)
        value = _strtoull(text) if len(text) < MAX_EVENT_NAME_LEN else None
        if not value or value > 0xFFFFFFFF:  # kstrtouint; 0 is refused too
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
        offset: int | None = 0
        cut = min((i for i in (symbol.find("+"), symbol.find("-")) if i >= 0), default=-1)
        if cut >= 0:
            offset = _strtol(symbol[cut:])
            if offset is None or not 0 <= offset <= 0xFFFFFFFF:
                self.fail(BAD_PROBE_ADDR, pos, word)
            symbol = symbol[:cut]
        if not _KSYM.fullmatch(symbol):
            self.fail(BAD_PROBE_ADDR, pos, word)
        # kprobe_on_func_entry(): an unknown symbol (-ENOENT) is left to registration to refuse
        entry = self.on_func_entry(symbol, offset)
        if is_return and entry is False:
            self.fail(BAD_RETPROBE, pos, word)
        return (
            symbol,
            offset,
            None,
            is_return,
            _Where(entry=not is_return and entry is True, ret=is_return, fprobe=False),
        )

    def _fprobe_point(self):
        word, pos = self.words[1]
        symbol = self._return_suffix(word, pos)
        is_return = symbol != word
        if not is_return:
            # An fprobe whose arguments use $retval is an exit probe (parse_symbol_and_return()).
            is_return = any(re.search(r"\$retval(?![A-Za-z0-9_])", w) for w, _ in self.words[2:])
        if not _FSYM.fullmatch(symbol):  # SYM+OFFS included: fprobes sit on entry/exit only
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
            group, pos, text = name, pos + slash + 1, text[slash + 1 :]
            if not text:
                return group, None  # 'p:mygroup/ SYM': default event name in mygroup
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
        elif address is not None:  # the kernel prints a hashed %p; the lab has no hashing
            name = f"{'r' if is_return else 'p'}_0x{address:016x}"
        else:
            name = f"{'r' if is_return else 'p'}_{symbol}_{offset}"
        name = name[: MAX_EVENT_NAME_LEN - 1]  # snprintf into a 64-byte buffer
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
        if self.btf is None:
            self._refuse_meta_args(words, where)
        else:
            words = self._expand_meta_args(words, where)
        args: list[FetchArg] = []
        for i, (word, pos) in enumerate(words):
            args.append(self._arg(i, word, pos, where, {a.name for a in args}))
        return tuple(args)

    def _proto(self) -> BtfProto | None:
        """query_btf_context(): the probed function's prototype, None if BTF has none."""
        return None if self.btf is None else self.btf.get(self.symbol)

    def _refuse_meta_args(self, words: list[tuple[str, int]], where: _Where) -> None:
        """Without BTF, traceprobe_expand_meta_args() only checks the bare $arg words: `$arg*`
        needs BTF."""
        for word, pos in words:
            if word.startswith("$arg"):
                if not (where.entry or where.ret):
                    self.fail(NOFENTRY_ARGS, pos, word)
                if word[4:5] == "*":
                    self.fail(NOSUP_BTFARG, pos, word)
                if not word[4:5].isdigit():
                    self.fail(BAD_VAR, pos, word)

    def _expand_meta_args(self, words: list[tuple[str, int]], where: _Where) -> list[tuple[str, int]]:
        """argv_has_var_arg() and traceprobe_expand_meta_args() (trace_probe.c): `$arg*` becomes
        every parameter's name, a bare `$argN[:TYPE]` the N-th's name (with the type); without a
        prototype, `$arg*` is refused and `$argN` is left as it is."""
        star, last = None, None
        for i, (word, pos) in enumerate(words):
            if not word.startswith("$arg"):
                continue
            last = (word, pos)
            if not (where.entry or where.ret):
                self.fail(NOFENTRY_ARGS, pos, word)
            if word[4:5].isdigit():
                continue
            if word[4:5] != "*":
                self.fail(BAD_VAR, pos, word)
            if star is not None:
                self.fail(DOUBLE_ARGS, pos, word)
            star = i
        if last is None:
            return words
        proto = self._proto()
        if proto is None or not proto.params:
            if star is not None:  # logged at the last $arg word, as the kernel's log index is
                self.fail(NOSUP_BTFARG, last[1], last[0])
            return words
        out: list[tuple[str, int]] = []
        for i, (word, pos) in enumerate(words):
            m = re.fullmatch(r"\$arg([0-9]+)(.*)", word)
            if i == star:
                out += [(name, pos) for name, _ in proto.params]
            elif m is None or int(m.group(1)) == 0:  # $arg0 keeps its own error, BAD_ARG_NUM
                out.append((word, pos))
            elif m.group(2)[:1] not in ("", ":"):
                self.fail(BAD_VAR, pos, word)
            elif int(m.group(1)) > len(proto.params):
                self.fail(NO_BTFARG, pos, word)
            else:
                out.append((proto.params[int(m.group(1)) - 1][0] + m.group(2), pos))
        return out

    def _arg(self, i: int, word: str, pos: int, where: _Where, used: set[str]) -> FetchArg:
        eq = word.find("=")
        if eq >= 0:
            if eq > MAX_ARG_NAME_LEN:
                self.fail(ARG_NAME_TOO_LONG, pos, word[:eq])
            if eq == 0:
                self.fail(NO_ARG_NAME, pos, word)
            name, body, bpos = word[:eq], word[eq + 1 :], pos + eq + 1
        else:
            # generate_probe_arg_name(): with BTF, text that is a C identifier names itself
            own = word.split(":")[0]
            name = own if self.btf is not None and _NAME.fullmatch(own) else f"arg{i + 1}"
            body, bpos = word, pos
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
            expr, type_name, tpos = body[:colon], body[colon + 1 :], bpos + colon + 1
        if expr in ("$comm", "$COMM") or expr.startswith('\\"'):
            if type_name not in (None, "string"):
                self.fail(NEED_STRING_TYPE, tpos, type_name)
            type_name = "string"
        type_ = self._type(type_name, tpos)
        self.btf_var, self.btf_type = False, None
        fetch, _ = self._fetch(expr, bpos, where)
        if self.btf_var:  # the BTF type, unless the user gave one (find_fetch_type_from_btf_type)
            if type_name is None:
                type_ = self.btf_type or DEFAULT_TYPE
            elif type_ == "string":
                self.fail(NOT_MODELLED_BTF, tpos, type_name)
        # A string is read at an address: memory fetches (their last load becomes the string
        # read), an immediate address, $comm or an immediate string. Not a register or $argN.
        if type_ == "string" and fetch.op not in ("deref", "mem", "sym", "imm", "comm", "imm_str"):
            self.fail(BAD_STRING, tpos, type_)  # as written: only "string" names the string type
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
            if where.fprobe:  # the kernel's text for it, though no '$' is involved
                self.fail(BAD_VAR, pos, expr)
            if expr[1:] not in self.regs:
                self.fail(BAD_REG_NAME, pos, expr)
            return Fetch("reg", expr[1:]), 1
        if c == "@":
            if expr[1:2].isdigit():
                address = _strtoull(expr[1:])
                if address is None:
                    self.fail(BAD_MEM_ADDR, pos, expr)
                return Fetch("mem", address), 2  # IMM, DEREF
            if expr[1:2] == "+":
                self.fail(FILE_ON_KPROBE, pos, expr)
            symbol = expr[1:]
            offset: int | None = 0
            cut = min((i for i in (symbol.find("+"), symbol.find("-")) if i >= 0), default=-1)
            if cut >= 0:
                offset, symbol = _strtol(symbol[cut:]), symbol[:cut]
            if offset is None or not _KSYM.fullmatch(symbol):
                self.fail(BAD_MEM_ADDR, pos, expr)
            return Fetch("sym", symbol, offset), 3  # symbol holder, IMM, DEREF
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
        if c.isascii() and (c.isalpha() or c == "_"):  # a BTF variable name
            if self.btf is None or not (where.entry or where.ret):
                self.fail(NOSUP_BTFARG, pos, expr)
            return self._btf_arg(expr, pos), 1
        self.fail(BAD_FETCH_ARG, pos, expr)

    def _var(self, expr: str, pos: int, where: _Where) -> Fetch:
        var = expr[1:]
        if var.startswith("retval"):
            if not where.ret:
                self.fail(RETVAL_ON_PROBE, pos, expr)
            proto = self._proto()
            if proto is not None:  # parse_btf_arg(): typed by the return type
                if var != "retval":
                    self._btf_arg(expr, pos)  # $retval->member, or a name no parameter has
                if proto.void:
                    self.fail(NO_RETVAL, pos, expr)
                self.btf_var, self.btf_type = True, proto.ret
            elif var != "retval":  # $retval->field etc. need BTF
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

    def _btf_arg(self, expr: str, pos: int) -> Fetch:
        """parse_btf_arg() (trace_probe.c): a parameter's name fetches it ($argN's fetch, at entry
        or, saved at entry, at exit) with its BTF type."""
        sep = re.search(r"[.-]", expr)
        name = expr if sep is None else expr[: sep.start()]
        if sep is not None:  # split_next_field()
            if expr[sep.start() :].startswith("."):
                self.fail(NOSUP_DAT_ARG, pos + sep.start(), expr)
            if not expr[sep.start() :].startswith("->"):
                self.fail(BAD_HYPHEN, pos + sep.start(), expr)
        proto = self._proto()
        if name != "$retval":
            if proto is None or not proto.params:
                self.fail(NO_BTF_ENTRY, pos, expr)
            index = next((i for i, (param, _) in enumerate(proto.params) if param == name), None)
            if index is None:
                self.fail(NO_BTFARG, pos, expr)
        if sep is not None:  # parse_btf_field(): a member through a pointer
            self.fail(NOT_MODELLED_BTF, pos + sep.start(), expr)
        assert proto is not None and index is not None
        self.btf_var, self.btf_type = True, proto.params[index][1]
        return Fetch("arg", index + 1)

    def _deref(self, expr: str, pos: int, where: _Where) -> tuple[Fetch, int]:
        user = expr[1:2] == "u"
        paren = expr.find("(")
        if paren < 0:
            self.fail(DEREF_NEED_BRACE, pos, expr)
        digits = expr[2 if user else 1 : paren]
        offset = _strtol("-" + digits if expr[0] == "-" else digits)
        if offset is None:
            self.fail(BAD_DEREF_OFFS, pos, expr[:paren])
        close = expr.rfind(")")
        if close < paren:
            self.fail(DEREF_OPEN_BRACE, pos + len(expr), expr)
        if close != len(expr) - 1:
            self.fail(BAD_FETCH_ARG, pos + close + 1, expr[close + 1 :])
        inner_pos = pos + paren + 1
        inner, slots = self._fetch(expr[paren + 1 : close], inner_pos, where)
        if inner.op in ("comm", "imm_str"):
            self.fail(COMM_CANT_DEREF, inner_pos, expr[paren + 1 : close])
        if slots + 1 > MAX_FETCH_OPS:
            self.fail(TOO_MANY_OPS, inner_pos, expr)
        return Fetch("deref", None, offset, inner, user), slots + 1


def _is_bitfield(name: str) -> bool:
    """find_fetch_type()'s bitfield: b<width>@<offset>/<container 8|16|32|64>."""
    return bool(re.fullmatch(r"b[^/]*/(?:8|16|32|64)", name))


def _strtoull(s: str) -> int | None:
    """kstrtoull(s, 0): 0x.. hex, 0.. octal, else decimal; a leading '+'; None if not a number."""
    s = s.removeprefix("+")
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
