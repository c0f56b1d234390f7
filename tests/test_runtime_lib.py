"""The lab's runtime library (emulator/arch/<arch>/lib.S, emulator/console.py) against Python:
the kernel's lib/string.c semantics, crypto/memneq.c, libgcc's helpers, the retpoline thunks,
printk's console lines and __stack_chk_fail; and libcalls.o, user C that gcc turns into calls."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from emulator import FtlabError, GuestFault, Machine
from emulator import arch as arches
from emulator.printk import format_printk
from fixtures import catalog
from helpers import ARCHES
from tracers import Lab
from tracers.cli.main import main

MASK64, E2BIG = (1 << 64) - 1, 7


@pytest.fixture(scope="module", params=ARCHES)
def m(request):
    return Machine(arches.get(request.param))


def c_string(text: bytes) -> bytes:
    return text + b"\0"


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


BYTES = [
    (b"", b""),
    (b"abc", b"abc"),
    (b"abc", b"abd"),
    (b"abd", b"abc"),
    (b"\x80", b"\x7f"),  # unsigned: 0x80 is the greater
    (b"\xff\x00", b"\x01\x00"),
    (b"same\x00x", b"same\x00y"),  # memcmp goes past a NUL
]


@pytest.mark.parametrize("a, b", BYTES)
def test_memcmp_is_the_first_differing_bytes_difference(m, a, b):
    """lib/string.c: the difference of the first differing bytes as unsigned chars, 0 if none."""
    expected = next((x - y for x, y in zip(a, b, strict=True) if x != y), 0)
    assert m.call("memcmp", a, b, len(a), ret="i32") == expected
    assert sign(m.call("memcmp", a, b, len(a), ret="i32")) == sign((a > b) - (a < b))


@pytest.mark.parametrize("a, b", BYTES)
def test_crypto_memneq_is_nonzero_when_different(m, a, b):
    assert (m.call("__crypto_memneq", a, b, len(a), ret="u64") != 0) == (a != b)


STRINGS = [b"", b"a", b"hello world", b"\xff\xfe high bytes", b"x" * 300]


@pytest.mark.parametrize("s", STRINGS)
def test_strlen_and_strnlen(m, s):
    assert m.call("strlen", c_string(s), ret="u64") == len(s)
    for count in (0, 1, len(s), len(s) + 5):
        assert m.call("strnlen", c_string(s), count, ret="u64") == min(len(s), count)


def _strcmp(a: bytes, b: bytes, n: int | None = None) -> int:
    """The first differing unsigned chars' difference (arch/arm64/lib/strcmp.S, strncmp.S), 0 if none."""
    a, b = c_string(a), c_string(b)
    for i in range(min(len(a), len(b)) if n is None else n):
        if a[i] != b[i]:
            return a[i] - b[i]
        if a[i] == 0:
            return 0
    return 0


# What the kernel's strcmp returns: x86_64's is lib/string.c's (-1 or 1), arm64's its own.
STRCMP_RESULT = {"x86_64": sign, "arm64": lambda difference: difference}


PAIRS = [(b"", b""), (b"abc", b"abc"), (b"abc", b"abd"), (b"abcd", b"abc"), (b"", b"a"), (b"\x80", b"\x01")]


@pytest.mark.parametrize("a, b", PAIRS)
def test_strcmp_and_strncmp(m, a, b):
    result = STRCMP_RESULT[m.arch.name]
    assert m.call("strcmp", c_string(a), c_string(b), ret="i32") == result(_strcmp(a, b))
    for n in (0, 1, 2, 3, 10):
        assert m.call("strncmp", c_string(a), c_string(b), n, ret="i32") == result(_strcmp(a, b, n)), n


@pytest.mark.parametrize("s, c", [(b"hello", ord("l")), (b"hello", ord("z")), (b"hello", 0), (b"", ord("a"))])
def test_strchr_and_memchr_return_pointers(m, s, c):
    """The pointer to the first c (strchr finds the terminator for c == 0), or NULL."""
    buf = c_string(s)
    base = m.alloc("heap", 64)
    m.write(base, buf)
    found = buf.find(bytes([c]))
    assert m.call("strchr", base, c | 0x100, ret="u64") == (base + found if found >= 0 else 0)  # (char)c
    found = s.find(bytes([c]))
    assert m.call("memchr", base, c, len(s), ret="u64") == (base + found if found >= 0 else 0)


def test_strcpy_and_strscpy(m):
    dst = bytearray(16)
    assert m.call("strcpy", dst, c_string(b"copy me"), ret="u64") != 0
    assert bytes(dst[:8]) == b"copy me\0"
    for count, src, ret, copied in (
        (16, b"fits", 4, b"fits\0"),
        (5, b"fits", 4, b"fits\0"),
        (4, b"fits", -E2BIG, b"fit\0"),  # truncated, still terminated
        (1, b"fits", -E2BIG, b"\0"),
        (0, b"fits", -E2BIG, b""),  # nothing written
    ):
        dst = bytearray(b"\xaa" * 16)
        for name in ("strscpy", "sized_strscpy"):
            assert m.call(name, dst, c_string(src), count) == ret, (count, src)
            assert bytes(dst[: len(copied)]) == copied and dst[len(copied) :] == b"\xaa" * (16 - len(copied))


def test_popcount(m):
    rng = random.Random(5)
    for x in [0, 1, MASK64, 1 << 63, *(rng.getrandbits(64) for _ in range(20))]:
        assert m.call("__popcountdi2", x, ret="i32") == (x).bit_count()
        assert m.call("__popcountsi2", x, ret="i32") == (x & 0xFFFFFFFF).bit_count()  # only the low 32 bits


def _split(x: int) -> tuple[int, int]:
    return x & MASK64, (x >> 64) & MASK64


def _join(pair: tuple[int, int]) -> int:
    return (pair[0] & MASK64) | (pair[1] & MASK64) << 64


def _signed(x: int) -> int:
    return x - (1 << 128) if x >> 127 else x


def _tdiv(n: int, d: int) -> tuple[int, int]:
    """C's division, truncated towards zero, and its remainder."""
    q = abs(n) // abs(d) * (1 if (n < 0) == (d < 0) else -1)
    return q, n - q * d


def test_128_bit_division(m):
    """__udivti3 / __umodti3 / __divti3 / __modti3: rdx:rax (x1:x0) from two register pairs."""
    rng = random.Random(128)
    values = [1, 2, 3, MASK64, 1 << 64, (1 << 128) - 1, 1 << 127, (1 << 127) + 12345]
    values += [rng.getrandbits(rng.choice((8, 64, 100, 128))) or 1 for _ in range(40)]
    for n in values:
        for d in values[:12]:
            args = (*_split(n), *_split(d))
            assert _join(m.call("__udivti3", *args, ret="pair")) == n // d, (n, d)
            assert _join(m.call("__umodti3", *args, ret="pair")) == n % d, (n, d)
            sn, sd = _signed(n), _signed(d)
            if sn == -(1 << 127) and sd == -1:
                continue  # overflows: undefined in C
            q, r = _tdiv(sn, sd)
            assert _signed(_join(m.call("__divti3", *args, ret="pair"))) == q, (sn, sd)
            assert _signed(_join(m.call("__modti3", *args, ret="pair"))) == r, (sn, sd)


def test_128_bit_division_by_zero_faults(m):
    with pytest.raises(GuestFault, match=r"^guest fault: .* <ftlab_udivmodti4\+0x[0-9a-f]+>: "):
        m.call("__udivti3", 5, 0, 0, 0, ret="pair")


def test_retpoline_thunks_jump_to_their_register(tmp_path):
    """Every __x86_indirect_thunk_<reg> (all GPRs but rsp) goes where its register points."""
    m = Machine(arches.get("x86_64"))
    saved = {r: r for r in ("rbx", "rbp", "r12", "r13", "r14", "r15")}  # callee-saved: restored
    regs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", *(f"r{n}" for n in range(8, 16))]
    source = tmp_path / "thunks.S"
    source.write_text(
        "target:\n    mov eax, 4242\n    ret\n"
        + "".join(
            f".globl t_{r}\nt_{r}:\n    push {saved.get(r, 'rax')}\n    lea {r}, [rip+target]\n"
            f"    call THUNK_{r.upper()}\n    pop {saved.get(r, 'rcx')}\n    ret\n"
            for r in regs
        )
    )
    thunks = {f"THUNK_{r.upper()}": m.symbols.get(f"__x86_indirect_thunk_{r}").addr for r in regs}
    assert "__x86_indirect_thunk_rsp" not in m.symbols
    m.load_lab_code(source, thunks)
    for r in regs:
        assert m.call(f"t_{r}") == 4242, r


def test_return_thunk_returns():
    m = Machine(arches.get("x86_64"))
    assert m.symbols.get("__x86_return_thunk") is not None


# -- printk ----------------------------------------------------------------------------------------


def _printf(fmt: str, *args) -> str:
    """A reference for the conversions C and Python's % share."""
    return fmt % args


@pytest.mark.parametrize(
    "fmt, args, expected",
    [
        ("%d|%i|%u", (-5 & MASK64, 7, -1 & MASK64), "-5|7|4294967295"),
        ("%ld|%lu|%lld", (-5 & MASK64, MASK64, 1 << 40), f"-5|{MASK64}|{1 << 40}"),
        (
            "%x|%X|%#x|%lx|%08x|%-6x|",
            (255, 255, 255, MASK64, 0xAB, 0xAB),
            _printf("%x|%X|%#x|%x|%08x|%-6x|", 255, 255, 255, MASK64, 0xAB, 0xAB),
        ),
        (
            "%5d|%-5d|%+d|% d|%05d",
            (42, 42, 42, 42, -42 & MASK64),
            _printf("%5d|%-5d|%+d|% d|%05d", 42, 42, 42, 42, -42),
        ),
        ("%hhd|%hd|%hu", (0x1FF, 0x18000, 0x18000), "-1|-32768|32768"),
        ("%c%c|%%|%o", (ord("o"), ord("k"), 8), "ok|%|10"),
        ("%*d|%.3d|%.0d", (6, 42, 7, 0), _printf("%*d|%.3d|", 6, 42, 7)),
        ("%p", (0x40001234,), "0000000040001234"),
    ],
)
def test_printk_format_against_python(fmt, args, expected):
    values = iter(args)
    assert format_printk(fmt, lambda: next(values), lambda a: "", lambda a: "") == expected


def test_printk_strings_symbols_and_errors(m):
    values = iter((0, 0))
    assert format_printk("[%s] [%.3s]", lambda: next(values), lambda a: "", str) == "[(null)] [(nu]"
    fib = 0x1234
    values = iter((fib, fib))
    assert format_printk("%ps %pS", lambda: next(values), str, lambda a: "fib+0x4") == "fib fib+0x4"
    with pytest.raises(FtlabError, match=r"^printk: %pI in .* is not among the conversions the lab formats$"):
        format_printk("%pI4", lambda: 0, str, str)
    with pytest.raises(FtlabError, match=r"^printk: conversion '%f' in .* is not among"):
        format_printk("%f", lambda: 0, str, str)


def test_printk_lines_levels_and_return_value(m):
    """The KERN_<LEVEL> prefix picks the level (default 4); KERN_CONT continues the last line;
    printk returns the stored text's length, without the prefix and the newline."""
    m.console.lines.clear()
    assert m.call("_printk", c_string(b"\x013alert %d\n"), 7) == len("alert 7")
    assert m.call("_printk", c_string(b"plain\n")) == len("plain")
    m.call("_printk", c_string(b"\x01cmore"))
    m.call("__warn_printk", c_string(b"two\nlines\n"))
    assert [str(line) for line in m.console.lines] == [
        "<3>alert 7",
        "<4>plainmore",
        "<4>------------[ cut here ]------------",
        "<4>two",
        "<4>lines",
    ]


def test_printk_reads_arguments_past_the_registers(m):
    """The ninth and later variadic arguments are on the stack (SysV and AAPCS64 alike)."""
    m.console.lines.clear()
    fmt = " ".join(["%d"] * 11)
    m.call("_printk", c_string(fmt.encode()), *range(1, 12))
    assert str(m.console.lines[-1]) == "<4>" + " ".join(map(str, range(1, 12)))


# -- libcalls.o: user C turned into library calls ----------------------------------------------------


@pytest.fixture(scope="module", params=ARCHES)
def libcalls(request):
    return Lab.open(str(catalog.OBJ_DIR / request.param / "libcalls.o"))


def test_libcalls_imports_what_the_runtime_supplies(libcalls):
    """The object really calls the library (else these tests would test the compiler)."""
    imports = set(libcalls.obj.imports)
    assert {"strlen", "memcmp", "__popcountdi2", "__udivti3", "__umodti3", "__divti3", "__modti3", "_printk"} <= imports
    if libcalls.arch.name == "x86_64":
        assert "__x86_indirect_thunk_rax" in imports


def test_libcalls_give_python_results(libcalls):
    rng = random.Random(8)
    for s in (b"", b"abc", b"\xff" * 40):
        assert libcalls.call("count_chars", c_string(s), ret="u64") == len(s)
    for x in (0, MASK64, *(rng.getrandbits(64) for _ in range(10))):
        assert libcalls.call("bits_set", x, ret="i32") == (x).bit_count()
    for _ in range(20):
        hi, lo, d = rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(rng.choice((8, 64))) or 1
        n = hi << 64 | lo
        assert libcalls.call("div128", hi, lo, d, ret="u64") == (n // d) & MASK64
        assert libcalls.call("mod128", hi, lo, d, ret="u64") == n % d
    for n, d in ((-7, 2), (7, -2), (-7, -2), (1 << 62, 3), (-(1 << 62), 7)):
        q, r = _tdiv(3 * n, d)
        assert libcalls.call("sdiv128", n, d) == q and libcalls.call("smod128", n, d) == r
    assert libcalls.call("same_prefix", b"abcX", b"abcY", 3) == 1
    assert libcalls.call("same_prefix", b"abcX", b"abcY", 4) == 0
    assert libcalls.call("call_twice", 20) == 41  # through the retpoline thunk on x86_64


def test_libcalls_printk_goes_to_the_console(libcalls, capsys):
    libcalls.machine.console.lines.clear()
    assert libcalls.call("greet", c_string(b"you"), 3) == len("hello you, 3 times (0x3)")
    assert [str(line) for line in libcalls.machine.console.lines] == ["<6>hello you, 3 times (0x3)"]


def test_cli_prints_console_lines_on_stderr_after_the_output(capsys, arch):
    path = str(catalog.OBJ_DIR / arch / "libcalls.o")
    assert main(["run", path, 'greet("cli", 2)']) == 0
    out, err = capsys.readouterr()
    assert out == f'greet("cli", 2) = {len("hello cli, 2 times (0x2)")} (0x18)\n'
    assert err == "<6>hello cli, 2 times (0x2)\n"
    assert main(["trace", path, "call_twice(1)"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "call_twice" in out


# -- __stack_chk_fail --------------------------------------------------------------------------------

SMASH = """
void smash(char *src, int n)
{
	char buf[8];
	for (int i = 0; i < n; i++)
		buf[i] = src[i];
	asm volatile("" : : "r"(buf) : "memory");
}
"""
STACK_FLAGS = {
    "x86_64": ("gcc", "-O1 -fno-pic -mcmodel=kernel -mno-red-zone -fstack-protector-all"),
    "arm64": ("aarch64-linux-gnu-gcc", "-O1 -fno-PIE -mgeneral-regs-only -fstack-protector-all"),
}


def test_stack_chk_fail_names_the_function(tmp_path, arch):
    """A canary overwritten: one line naming the function (its call's return address)."""
    compiler, flags = STACK_FLAGS[arch]
    if shutil.which(compiler) is None:
        pytest.skip(f"needs {compiler}")
    (tmp_path / "smash.c").write_text(SMASH)
    subprocess.run([compiler, *flags.split(), "-c", "smash.c", "-o", "smash.o"], cwd=tmp_path, check=True)
    lab = Lab.open(str(tmp_path / "smash.o"), init=False)
    lab.call("smash", b"12345678", 8)  # within the buffer: returns
    with pytest.raises(GuestFault, match=r"^stack-protector: Kernel stack is corrupted in: smash\+0x[0-9a-f]+ "):
        lab.call("smash", b"x" * 64, 64)
