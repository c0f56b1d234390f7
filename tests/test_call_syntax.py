"""Issue #12: the CALL language (tracers/call_syntax.py): sequences, buffers, repeated strings,
typed results; every refusal one line naming its column; any text parsed or refused."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator import FtlabError
from tracers.call_syntax import MAX_BUFFER, RESULT_TYPES, Buffer, CallSyntaxError, parse_calls, ret_type

FAST = settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_a_sequence_shares_its_buffers():
    seq = parse_calls('arc4_setkey(ctx=buf(1032), b"Key", 3); arc4_crypt(ctx, out=buf(9), b"Plaintext", 9)')
    setkey, crypt = seq.calls
    ctx, out = seq.buffers
    assert (ctx.name, ctx.init, out.name, out.init) == ("ctx", bytes(1032), "out", bytes(9))
    assert setkey.name == "arc4_setkey" and setkey.args == (ctx, b"Key", 3)
    assert crypt.args[0] is ctx and crypt.args[1] is out and crypt.args[2:] == (b"Plaintext", 9)
    assert [c.text for c in seq.calls] == [
        'arc4_setkey(ctx=buf(1032), b"Key", 3)',
        'arc4_crypt(ctx, out=buf(9), b"Plaintext", 9)',
    ]
    assert seq.named == (ctx, out)


def test_unnamed_buffers_are_each_their_own():
    seq = parse_calls("f(buf(4), buf(4))")
    a, b = seq.calls[0].args
    assert isinstance(a, Buffer) and isinstance(b, Buffer) and a is not b and seq.named == ()


@pytest.mark.parametrize(
    "text,args",
    [
        (r'f(b"\x00"*16)', (bytes(16),)),
        ('f(b"ab" * 3, "é"*2, b""*5, "x"*0)', (b"ababab", "éé".encode(), b"", b"")),
        ("f(-+-5, --0x10, 0o17, 0b101, 1_000, +7)", (5, 16, 15, 5, 1000, 7)),
        ("f(" + "-" * 100_001 + "1)", (-1,)),  # no recursion, no limit on signs
        (r"f(rb'\d', B'\'', u'\u00e9')", (b"\\d", b"'", "é".encode())),
        ("f(1,)", (1,)),
        ("f()", ()),
    ],
)
def test_literals(text, args):
    [call] = parse_calls(text).calls
    assert call.args == args


def test_named_strings_are_buffers_with_their_bytes():
    seq = parse_calls('arc4_crypt(ctx=buf(8), text=b"abc" * 2, text, 6)')
    ctx, text = seq.buffers
    assert text.name == "text" and text.init == b"abcabc" and seq.calls[0].args == (ctx, text, text, 6)


@pytest.mark.parametrize("kind", RESULT_TYPES)
def test_each_result_type(kind):
    [call] = parse_calls(f"crc_itu_t(0, b'1', 1) : {kind}").calls
    assert call.ret == kind and call.text == f"crc_itu_t(0, b'1', 1) : {kind}"


def test_results_are_untyped_unless_given():
    a, b, c = parse_calls("f(1); g(2):x8; h(3):i32").calls
    assert (a.ret, b.ret, c.ret) == (None, "x8", "s32") and c.text == "h(3):i32"


def test_the_text_shown_is_one_line():
    seq = parse_calls("adler_init(ctx=buf(8));\n\tadler_final( ctx )")
    assert seq.text == "adler_init(ctx=buf(8)); adler_final( ctx )"
    assert seq.calls[1].text == "adler_final( ctx )"


def test_clones_and_keywords_name_functions():
    assert [c.name for c in parse_calls("fib.isra.0(1); if(2); buf(3)").calls] == ["fib.isra.0", "if", "buf"]


def test_ret_type_takes_the_old_names():
    assert [ret_type(t) for t in ("i64", "i32", "u16", "pair", "x64")] == ["s64", "s32", "u16", "pair", "x64"]
    with pytest.raises(FtlabError, match=r"^unknown result type 'i16' \(known: u8, .*, i64, i32\)$"):
        ret_type("i16")


ERRORS = [
    ("", 1, "expected a function name, found the end"),
    ("   ", 4, "expected a function name, found the end"),
    ("fib", 4, r"expected '\(' after fib, found the end"),
    (
        "fib(",
        5,
        r"expected an argument \(an integer, a string, buf\(SIZE\) or a buffer's name\) or '\)', found the end",
    ),
    ("fib(1", 6, r"expected ',' or '\)', found the end"),
    ("fib(1 2)", 7, r"expected ',' or '\)', found '2'"),
    ("fib(1,,2)", 7, r"expected an argument .* found ','"),
    ("fib(n)", 5, r"'n' is no buffer named before it \(NAME=buf\(SIZE\) names one\)"),
    ("f(x, x=buf(1))", 3, r"'x' is no buffer named before it"),
    ("fib(1) fib(2)", 8, r"expected ';', ':TYPE' or the end, found 'fib'"),
    ("fib(1):u16 x", 12, r"expected ';' or the end, found 'x'"),
    ("fib(1):", 8, r"expected a result type \(u8 .* void\), found the end"),
    ("fib(1):i16", 8, r"expected a result type .*, found 'i16'"),
    ("fib(1);;", 8, "expected a function name, found ';'"),
    ("f(x=1)", 5, r"expected buf\(SIZE\) or a string after 'x=' \(only a buffer takes a name\), found '1'"),
    ("f(x=y)", 5, r"expected buf\(SIZE\) or a string after 'x='"),
    ("f(a.b=buf(1))", 3, "'a.b' cannot name a buffer: a C identifier can"),
    ("f(x=buf(1), x=buf(2))", 13, r"'x' names a buffer already \(at column 3\)"),
    ("f(buf(0))", 7, rf"buf\(0\): a buffer holds 1 to {MAX_BUFFER} bytes"),
    (f"f(buf({MAX_BUFFER + 1}))", 7, rf"buf\({MAX_BUFFER + 1}\): a buffer holds"),
    ("f(buf(-1))", 7, r"expected the buffer's size in bytes, found '-'"),
    ("f(buf 8)", 3, r"'buf' is no buffer named before it"),  # buf( makes a buffer
    ("f(buf(8]", 8, r"unexpected character '\]'"),
    ("f(buf(8,))", 8, r"expected '\)' after the size, found ','"),
    ('f(b"ab" * -1)', 11, r"expected a repeat count after '\*', found '-'"),
    ('f(b"ab" * 1048576)', 3, rf"2 bytes \* 1048576 is more than a buffer's {MAX_BUFFER} bytes"),
    ("f(3 * b'a')", 5, r"expected ',' or '\)', found '\*'"),
    ('f("abc)', 3, r"unterminated string \(a string ends on its line\)"),
    ('f("ab\nc")', 3, "unterminated string"),
    ('f(b"é")', 3, r'b"é" is not a valid bytes or string literal'),
    ('f(br"a" f"x")', 9, r"expected ',' or '\)', found 'f'"),
    ('f(ub"a")', 3, r"ub\"a\" is not a valid bytes or string literal"),
    ('f("\\udcff")', 3, r'"\\udcff" holds a lone surrogate, which has no UTF-8'),
    ("f(09)", 3, r"'09' is not an integer \(20, 0x14, 0o24, 0b10100\)"),
    ("f(0x)", 3, r"'0x' is not an integer"),
    ("f(1e5)", 3, r"'1e5' is not an integer"),
    ("f(-)", 4, r"expected an integer after the sign, found '\)'"),
    ("f(- x)", 5, r"expected an integer after the sign, found 'x'"),
    ("f(1)\n$", 6, r"unexpected character '\$'"),
    ("f(\x00)", 3, r"unexpected character '\\x00'"),
    ("é(1)", 1, "unexpected character 'é'"),
]


@pytest.mark.parametrize("text,column,message", ERRORS)
def test_every_refusal_names_its_column(text, column, message):
    with pytest.raises(CallSyntaxError) as err:
        parse_calls(text)
    assert err.value.column == column
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    assert re.match(rf"malformed CALL '{re.escape(shown)}': at column {column}: {message}", str(err.value)), err.value


# -- property-based ------------------------------------------------------------------------------

SYNTAX = st.sampled_from(list(" \t\n()[],;:=*+-_.\"'\\0123456789abfxuUsrB:é\x00"))
WORDS = st.sampled_from(["buf", "ctx", "out", "u16", "x64", "pair", "b'a'", '"é"', "0x1f", "*3", "=", ";", ":"])
TEXT = st.one_of(st.text(max_size=60), st.text(SYNTAX, max_size=60), st.lists(WORDS | SYNTAX, max_size=20).map("".join))


@FAST
@given(TEXT)
def test_any_text_is_parsed_or_refused_with_its_column(text):
    try:
        seq = parse_calls(text)
    except CallSyntaxError as err:
        refused = err
    else:
        refused = None
    if refused is not None:
        assert "\n" not in str(refused) and 1 <= refused.column <= len(text) + 1
        return
    assert seq.calls and all(re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", c.name, re.ASCII) for c in seq.calls)
    assert all(isinstance(a, (int, bytes, Buffer)) and not isinstance(a, bool) for c in seq.calls for a in c.args)


IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@st.composite
def sequences(draw):
    """A sequence as (text, [(name, [expected arg], type)]) with buffers as ('buffer', name, bytes)."""
    calls, names, spelled = [], {}, []
    for _ in range(draw(st.integers(1, 4))):
        func = draw(IDENT)
        args, texts = [], []
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(
                st.sampled_from(["int", "bytes", "buf", "named", "ref"] if names else ["int", "bytes", "buf", "named"])
            )
            if kind == "int":
                v = draw(st.integers(-(1 << 70), 1 << 70))
                args.append(v)
                texts.append(hex(v) if v % 2 else str(v))
            elif kind == "bytes":
                v, n = draw(st.binary(max_size=6)), draw(st.integers(0, 4))
                args.append(v * n)
                texts.append(f"{v!r} * {n}")
            elif kind == "buf":
                n = draw(st.integers(1, 64))
                args.append(("buffer", None, bytes(n)))
                texts.append(f"buf({n})")
            elif kind == "named":
                name = draw(IDENT.filter(lambda s: s not in names))
                init = draw(st.one_of(st.integers(1, 64).map(bytes), st.text(max_size=4).map(str.encode)))
                names[name] = ("buffer", name, init)
                args.append(names[name])
                texts.append(f"{name}=buf({len(init)})" if not any(init) and init else f"{name}={init.decode()!r}")
            else:
                name = draw(st.sampled_from(sorted(names)))
                args.append(names[name])
                texts.append(name)
        ret = draw(st.none() | st.sampled_from(RESULT_TYPES))
        calls.append((func, args, ret))
        spelled.append(f"{func}({', '.join(texts)})" + (f":{ret}" if ret else ""))
    return "; ".join(spelled), calls


@FAST
@given(sequences())
def test_sequences_read_back_what_was_written(written):
    text, calls = written
    seq = parse_calls(text)
    assert seq.text == text and "; ".join(c.text for c in seq.calls) == text

    def plain(arg):
        return ("buffer", arg.name, arg.init) if isinstance(arg, Buffer) else arg

    assert [(c.name, [plain(a) for a in c.args], c.ret) for c in seq.calls] == calls
    named = [a for c in seq.calls for a in c.args if isinstance(a, Buffer) and a.name is not None]
    for a in named:  # a name is one buffer wherever it appears
        assert all(b is a for b in named if b.name == a.name)
