"""The CALL language: one call, or a sequence of calls sharing buffers, with typed results.

    arc4_setkey(ctx=buf(1032), b"Key", 3); arc4_crypt(ctx, out=buf(9), b"Plaintext", 9)
    crc_itu_t(0, b"123456789", 9):u16

The grammar (whitespace, newlines included, is free between tokens):

    sequence := call (';' call)* [';']
    call     := FUNC '(' [arg (',' arg)* [',']] ')' [':' TYPE]
    arg      := NAME '=' buffer      a named buffer: printed after the calls
              | NAME                 a buffer named earlier: its address again
              | buffer | integer
    buffer   := 'buf' '(' SIZE ')'   SIZE zeroed bytes
              | string ['*' COUNT]   the string's bytes (a str's UTF-8), COUNT times over
    integer  := ('+' | '-')* INT     Python's integer literals: 20, 0x14, 0o24, 0b10100, 1_000
    string   := a Python bytes or str literal on one line: b"\\x00", 'abc', rb"\\d"
    TYPE     := u8 u16 u32 u64 s8 s16 s32 s64 x8 x16 x32 x64 (the kernel's fetcharg types,
                Documentation/trace/kprobetrace.rst), pair (a 16-byte struct in two registers)
                or void (nothing to read); i64 and i32 are s64 and s32 (--ret's older names)
    FUNC     := a C identifier, or a compiler's clone of one (fib.isra.0)
    NAME     := a C identifier

A named buffer or buf(SIZE) lives at one address for the whole sequence; an unnamed string is
copied for its call alone. Python's own parser cannot read this: `f(ctx=buf(8), 3)` puts a
positional argument after a keyword one. An error is one line naming the column (1-based, in the
text as given) where the parser stopped and what it expected there.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field
from typing import NoReturn

from emulator import FtlabError

RESULT_TYPES = (*(f"{k}{bits}" for k in "usx" for bits in (8, 16, 32, 64)), "pair", "void")
RET_ALIASES = {"i64": "s64", "i32": "s32"}  # --ret's names from before the kernel's were taken
DEFAULT_TYPE = "s64"  # a result nothing types: the whole return register, signed
MAX_BUFFER = 1 << 20  # bytes in one buffer or repeated string: the lab's heap is 16 MiB

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>[bBrRuU]{0,2}["'])        # a string's start: its end is found by _string_end
      | (?P<name>[A-Za-z_]\w*(?:\.\w+)*)
      | (?P<int>[0-9]\w*)
      | (?P<punct>[(),;=*:+-])""",
    re.VERBOSE | re.ASCII,
)
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*", re.ASCII)


class CallSyntaxError(FtlabError):
    """A CALL the parser refused: the text, the column it stopped at and what it expected."""

    def __init__(self, text: str, column: int, message: str):
        self.text, self.column, self.message = text, column, message
        super().__init__(f"malformed CALL '{printable(text)}': at column {column}: {message}")


@dataclass(eq=False)  # each buffer is itself: two buf(8) are two buffers
class Buffer:
    """Guest memory the calls of a sequence share, its address passed for each mention."""

    name: str | None  # None: an unnamed buf(SIZE)
    init: bytes = field(repr=False)  # its bytes before the first call
    column: int


Arg = int | bytes | Buffer


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Arg, ...]
    ret: str | None  # the type the user gave (':u16'), else None: the caller's default applies
    text: str  # as written, whitespace between tokens made one line


@dataclass(frozen=True)
class CallSequence:
    text: str
    calls: tuple[Call, ...]
    buffers: tuple[Buffer, ...] = field(default=())  # every buffer, in the order written

    @property
    def named(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if b.name is not None)


def printable(text: str) -> str:
    """Text for a one-line message: control characters (newlines too) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def ret_type(text: str) -> str:
    """A result type as --ret takes it: a TYPE, or one of its older names (i64, i32)."""
    kind = RET_ALIASES.get(text, text)
    if kind not in RESULT_TYPES:
        known = ", ".join((*RESULT_TYPES, *RET_ALIASES))
        raise FtlabError(f"unknown result type '{printable(text)}' (known: {known})")
    return kind


@dataclass(frozen=True)
class _Token:
    kind: str  # name, int, string, punct, end
    text: str
    start: int
    end: int


def parse_calls(text: str) -> CallSequence:
    """CALL text as the grammar above says, or a CallSyntaxError naming the column."""
    return _Parser(text).sequence()


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = self._tokens()
        self.at = 0
        self.buffers: list[Buffer] = []
        self.names: dict[str, Buffer] = {}

    def fail(self, where: int | _Token, message: str) -> NoReturn:
        start = where.start if isinstance(where, _Token) else where
        raise CallSyntaxError(self.text, start + 1, message)

    def _tokens(self) -> list[_Token]:
        text, tokens, pos = self.text, [], 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                self.fail(pos, f"unexpected character '{printable(text[pos])}'")
            kind = m.lastgroup or ""
            end = self._string_end(m.end() - 1) if kind == "string" else m.end()
            if kind != "space":
                tokens.append(_Token(kind, text[pos:end], pos, end))
            pos = end
        tokens.append(_Token("end", "", len(text), len(text)))
        return tokens

    def _string_end(self, quote: int) -> int:
        """Just past the quote closing the one at `quote`; backslashes escape the next character."""
        text, pos = self.text, quote + 1
        while pos < len(text) and text[pos] not in ("\n", text[quote]):
            pos += 2 if text[pos] == "\\" else 1
        if pos >= len(text) or text[pos] == "\n":
            self.fail(quote, "unterminated string (a string ends on its line)")
        return pos + 1

    # -- the tokens --------------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.at + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.peek()
        self.at += tok.kind != "end"
        return tok

    def accept(self, punct: str) -> bool:
        if self.peek().kind == "punct" and self.peek().text == punct:
            self.at += 1
            return True
        return False

    def expected(self, what: str) -> NoReturn:
        tok = self.peek()
        found = "the end" if tok.kind == "end" else f"'{printable(tok.text)}'"
        self.fail(tok, f"expected {what}, found {found}")

    def expect(self, punct: str, what: str) -> None:
        if not self.accept(punct):
            self.expected(what)

    # -- the grammar -------------------------------------------------------------------------------

    def sequence(self) -> CallSequence:
        calls = [self.call()]
        while self.accept(";") and self.peek().kind != "end":
            calls.append(self.call())
        if self.peek().kind != "end":
            self.expected("';' or the end" if calls[-1].ret else "';', ':TYPE' or the end")
        return CallSequence(self.shown(0, len(self.tokens) - 1), tuple(calls), tuple(self.buffers))

    def call(self) -> Call:
        first = self.at
        if self.peek().kind != "name":
            self.expected("a function name")
        name = self.take().text
        self.expect("(", f"'(' after {name}")
        args: list[Arg] = []
        while not self.accept(")"):
            args.append(self.arg())
            if not self.accept(","):
                self.expect(")", "',' or ')'")
                break
        ret = None
        if self.accept(":"):
            tok = self.peek()
            if tok.kind != "name" or RET_ALIASES.get(tok.text, tok.text) not in RESULT_TYPES:
                self.expected(f"a result type ({' '.join(RESULT_TYPES)})")
            self.take()
            ret = RET_ALIASES.get(tok.text, tok.text)
        return Call(name, tuple(args), ret, self.shown(first, self.at))

    def arg(self) -> Arg:
        tok, after = self.peek(), self.peek(1)
        if tok.kind == "name" and after.kind == "punct" and after.text == "=":
            return self.named()
        if tok.kind == "name" and tok.text == "buf" and after.text == "(":
            return self.buffer(None, tok)
        if tok.kind == "name":
            self.take()
            if tok.text not in self.names:
                self.fail(tok, f"'{tok.text}' is no buffer named before it (NAME=buf(SIZE) names one)")
            return self.names[tok.text]
        if tok.kind == "string":
            return self.string()
        if tok.kind == "int" or tok.text in ("+", "-"):
            return self.integer()
        self.expected("an argument (an integer, a string, buf(SIZE) or a buffer's name) or ')'")

    def named(self) -> Buffer:
        tok = self.take()
        self.take()  # '='
        if not _IDENTIFIER.fullmatch(tok.text):
            self.fail(tok, f"'{tok.text}' cannot name a buffer: a C identifier can")
        if tok.text in self.names:
            self.fail(tok, f"'{tok.text}' names a buffer already (at column {self.names[tok.text].column})")
        value = self.peek()
        if value.kind == "name" and value.text == "buf" and self.peek(1).text == "(":
            buffer = self.buffer(tok.text, tok)
        elif value.kind == "string":
            buffer = Buffer(tok.text, self.string(), tok.start + 1)
            self.buffers.append(buffer)
        else:
            self.expected(f"buf(SIZE) or a string after '{tok.text}=' (only a buffer takes a name)")
        self.names[tok.text] = buffer
        return buffer

    def buffer(self, name: str | None, where: _Token) -> Buffer:
        self.take()  # buf
        self.expect("(", "'(' after buf")
        size = self.count("the buffer's size in bytes")
        if not 1 <= size <= MAX_BUFFER:
            self.fail(self.peek(-1), f"buf({size}): a buffer holds 1 to {MAX_BUFFER} bytes")
        self.expect(")", "')' after the size")
        buffer = Buffer(name, bytes(size), where.start + 1)
        self.buffers.append(buffer)
        return buffer

    def string(self) -> bytes:
        tok = self.take()
        try:
            with warnings.catch_warnings():  # an invalid escape ('\d') is Python's SyntaxWarning
                warnings.simplefilter("ignore")
                value = ast.literal_eval(tok.text)
        except (SyntaxError, ValueError, MemoryError):
            self.fail(tok, f"{printable(tok.text)} is not a valid bytes or string literal")
        if isinstance(value, str):
            try:
                value = value.encode()
            except UnicodeEncodeError:  # a lone surrogate
                self.fail(tok, f"{printable(tok.text)} holds a lone surrogate, which has no UTF-8")
        if self.accept("*"):
            count = self.count("a repeat count after '*'")
            if len(value) * count > MAX_BUFFER:
                self.fail(tok, f"{len(value)} bytes * {count} is more than a buffer's {MAX_BUFFER} bytes")
            value *= count
        return value

    def count(self, what: str) -> int:
        """An unsigned integer literal."""
        if self.peek().kind != "int":
            self.expected(what)
        return self.number(self.take())

    def integer(self) -> int:
        sign = 1
        while self.peek().text in ("+", "-"):
            sign = -sign if self.take().text == "-" else sign
        if self.peek().kind != "int":
            self.expected("an integer after the sign")
        return sign * self.number(self.take())

    def number(self, tok: _Token) -> int:
        try:
            return int(tok.text, 0)
        except ValueError:
            self.fail(tok, f"'{tok.text}' is not an integer (20, 0x14, 0o24, 0b10100)")

    def shown(self, first: int, end: int) -> str:
        """Tokens [first, end) as written, one line: a gap holding a newline or a tab becomes a space."""
        parts = []
        for n in range(first, end):
            tok = self.tokens[n]
            if n > first:
                gap = self.text[self.tokens[n - 1].end : tok.start]
                parts.append(gap if gap.strip(" ") == "" else " ")
            parts.append(tok.text)
        return printable("".join(parts))
