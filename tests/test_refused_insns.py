"""Instructions Unicorn would run wrongly are refused before they run (issue #12).

Unicorn 2.1 runs 128-bit VEX-encoded x86 instructions with legacy SSE semantics: the reference here
is Unicorn itself, run bare, showing the wrong result the lab refuses to give. Objects are built by
hand (keystone bytes in a minimal ELF) or by gcc -mavx where gcc is installed.
"""

import shutil
import struct
import subprocess

import keystone
import pytest
import unicorn
from unicorn import x86_const as X

from emulator import GuestFault, Machine, asm
from emulator import arch as arches
from fixtures import catalog
from tracers import Lab
from tracers.core.kprobes import Kprobe

X86 = arches.get("x86_64")
EM = {"x86_64": 62, "arm64": 183}


def elf_object(path, arch_name: str, functions: list[tuple[str, bytes]]):
    """A relocatable ELF64 with one .text holding the functions (STT_FUNC, GLOBAL) in order."""
    text, syms, names = b"", [b"\0" * 24], b"\0"
    for name, code in functions:
        syms.append(struct.pack("<IBBHQQ", len(names), 0x12, 0, 1, len(text), len(code)))
        names += name.encode() + b"\0"
        text += code
    shstr = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    symtab = b"".join(syms)
    body = [text, symtab, names, shstr]
    offsets, off = [], 64
    for part in body:
        offsets.append(off)
        off += len(part)
    shoff = -(-off // 8) * 8
    headers = [
        b"\0" * 64,
        struct.pack("<IIQQQQIIQQ", 1, 1, 6, 0, offsets[0], len(text), 0, 0, 16, 0),  # .text AX
        struct.pack("<IIQQQQIIQQ", 7, 2, 0, 0, offsets[1], len(symtab), 3, 1, 8, 24),  # .symtab
        struct.pack("<IIQQQQIIQQ", 15, 3, 0, 0, offsets[2], len(names), 0, 0, 1, 0),  # .strtab
        struct.pack("<IIQQQQIIQQ", 23, 3, 0, 0, offsets[3], len(shstr), 0, 0, 1, 0),  # .shstrtab
    ]
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, EM[arch_name], 1, 0, 0, shoff, 0, 64, 0, 0, 64, 5, 4)
    data = header + b"".join(body)
    path.write_bytes(data + b"\0" * (shoff - len(data)) + b"".join(headers))
    return path


def x86(source: str) -> bytes:
    return bytes(keystone.Ks(*X86.ks).asm(source)[0])


def test_unicorn_runs_vex_with_sse_semantics():
    """The measured fact the refusal rests on (docs/unicorn.md): vpaddd xmm0, xmm1, xmm2 computes
    xmm0 + xmm2, as legacy paddd xmm0, xmm2 would, instead of xmm1 + xmm2. If this fails, Unicorn
    changed: check the refusal is still needed."""
    uc = unicorn.Uc(*X86.uc)
    code = x86("vpaddd xmm0, xmm1, xmm2")
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code)
    for reg, value in ((X.UC_X86_REG_XMM0, 1000), (X.UC_X86_REG_XMM1, 100), (X.UC_X86_REG_XMM2, 1)):
        uc.reg_write(reg, value)
    uc.emu_start(0x1000, 0x1000 + len(code))
    assert uc.reg_read(X.UC_X86_REG_XMM0) == 1000 + 1  # not 100 + 1


def test_cpuid_advertises_no_avx():
    """Kernel code that picks an AVX path by CPU feature (boot_cpu_has(X86_FEATURE_AVX)) does not
    pick it: CPUID.1:ECX.AVX[28] and CPUID.7.0:EBX.AVX2[5] are clear (Intel SDM vol. 2A, CPUID)."""
    uc = unicorn.Uc(*X86.uc)
    code = x86("cpuid")
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, code)
    leaves = {}
    for leaf in (1, 7):
        uc.reg_write(X.UC_X86_REG_RAX, leaf)
        uc.reg_write(X.UC_X86_REG_RCX, 0)
        uc.emu_start(0x1000, 0x1000 + len(code))
        leaves[leaf] = uc.reg_read(X.UC_X86_REG_RCX), uc.reg_read(X.UC_X86_REG_RBX)
    assert leaves[1][0] >> 28 & 1 == 0
    assert leaves[7][1] >> 5 & 1 == 0


@pytest.mark.parametrize(
    "source,kind",
    [
        ("vpaddd xmm0, xmm1, xmm2", "VEX-encoded (AVX, BMI)"),  # C5, two-byte VEX
        ("vpaddd xmm8, xmm9, xmm10", "VEX-encoded (AVX, BMI)"),  # C4, three-byte VEX
        ("vzeroupper", "VEX-encoded (AVX, BMI)"),
        ("andn rax, rbx, rcx", "VEX-encoded (AVX, BMI)"),  # BMI1 is VEX-encoded too
        ("vpaddd zmm0, zmm1, zmm2", "EVEX"),
        ("paddd xmm0, xmm2", None),
        ("pop qword ptr [rax]", None),  # 8F /0 is POP, not XOP
        ("add rsp, 8", None),  # c4 as a ModRM byte
        ("mov eax, 0x62c5c4", None),  # the opcode bytes as an immediate
    ],
)
def test_x86_decision(source, kind):
    reason = X86.refused(x86(source))
    assert reason is None if kind is None else kind in reason


def test_prefixed_vex_is_refused():
    """fs vpaddd xmm0, xmm1, [rax] (64 c5 f1 fe 00): a segment prefix before the VEX byte."""
    assert "VEX" in X86.refused(bytes.fromhex("64c5f1fe00"))


def test_xop_is_refused():
    """vprotb xmm1, xmm2, 1 (AMD XOP: 8F, map 8); capstone 5 does not decode XOP, keystone not assemble it."""
    assert "XOP" in X86.refused(bytes.fromhex("8fe878c0ca01"))


@pytest.fixture
def vex_machine(tmp_path):
    m = Machine(X86)
    functions = [
        ("before", x86("lea eax, [rdi + rsi]; ret")),
        ("vadd", x86("mov eax, edi; vpaddd xmm0, xmm1, xmm2; movd eax, xmm0; ret")),
        ("after", x86("mov eax, edi; imul eax, esi; ret")),
    ]
    m.load(elf_object(tmp_path / "vex.o", "x86_64", functions))
    return m


def test_vex_instruction_is_refused_before_it_runs(vex_machine):
    m = vex_machine
    vadd = m.symbols.get("vadd").addr
    with pytest.raises(GuestFault) as err:
        m.call("vadd", 7)
    assert str(err.value) == (
        f"guest fault: refused vpaddd xmm0, xmm1, xmm2 at {vadd + 2:#x} <vadd+0x2>: "
        "VEX-encoded (AVX, BMI): Unicorn runs 128-bit AVX with SSE semantics (vpaddd xmm0, xmm1, xmm2 "
        "computes xmm0 + xmm2), so the lab runs no VEX instruction until one is verified"
    )
    assert "\n" not in str(err.value)
    assert m.read(vadd, 6) == x86("mov eax, edi; vpaddd xmm0, xmm1, xmm2")  # the text is not altered


def test_functions_without_vex_run(vex_machine):
    assert vex_machine.call("before", 3, 4) == 7
    assert vex_machine.call("after", 3, 4) == 12


def gcc_avx(tmp_path, flags):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    src, out = tmp_path / "v.c", tmp_path / f"v{len(flags)}.o"
    src.write_text("void vadd(int *a, const int *b, int n) { for (int i = 0; i < n; i++) a[i] += b[i]; }\n")
    cmd = [gcc, "-O3", "-fno-pic", "-fno-stack-protector", "-fcf-protection=none", *flags, "-c", str(src), "-o"]
    if subprocess.run([*cmd, str(out)], check=False, capture_output=True).returncode:
        pytest.skip("gcc cannot build x86_64 objects here")
    return out


def test_real_avx_code_is_refused(tmp_path):
    """gcc -O3 -mavx vectorises the loop with vpaddd: refused. The same source built without AVX
    runs and gives the Python result."""
    a, b = list(range(1, 41)), [1000 * k for k in range(40)]
    words = struct.Struct("<40i")
    m = Machine(X86)
    m.load(gcc_avx(tmp_path, ["-mno-avx"]))
    buf = bytearray(words.pack(*a))
    m.call("vadd", buf, words.pack(*b), 40)
    assert list(words.unpack(buf)) == [x + y for x, y in zip(a, b, strict=True)]
    m = Machine(X86)
    m.load(gcc_avx(tmp_path, ["-mavx", "-mno-avx2"]))
    with pytest.raises(
        GuestFault, match=r"^guest fault: refused v\w+ .* at 0x[0-9a-f]+ <vadd\+0x[0-9a-f]+>: VEX-encoded"
    ):
        m.call("vadd", bytearray(words.pack(*a)), words.pack(*b), 40)


@pytest.mark.parametrize("variant", catalog.names("x86_64"))
def test_fixtures_have_nothing_refused(variant):
    """The fixtures are built without AVX: capstone names no instruction of theirs with a v
    mnemonic (its names for VEX/EVEX encodings), and the refusal finds none either."""
    m = Machine(X86)
    obj = m.load(catalog.variant("x86_64", variant).path)
    for f in obj.functions:
        for addr, _, text in asm.disassemble(X86, m.read(f.addr, f.size), f.addr):
            assert not text.startswith("v"), f"{f.name} at {addr:#x}: {text}"
            assert X86.refused(m.read(addr, 15)) is None, f"{f.name} at {addr:#x}: {text}"


def test_kprobe_on_a_refused_instruction_does_not_hide_it(vex_machine, tmp_path):
    """A kprobe's int3 over the vpaddd's first byte would run the original instruction out of line
    in a slot: the refusal still comes first."""
    path = tmp_path / "vex.o"  # vex_machine wrote it
    lab = Lab.open(str(path), "x86_64")
    hits = []
    lab.kprobes.register(Kprobe("vadd", 2, lambda p, regs: hits.append(p) and 0))
    assert lab.machine.read(lab.machine.symbols.get("vadd").addr + 2, 1) == b"\xcc"  # armed
    with pytest.raises(GuestFault, match=r"^guest fault: refused vpaddd xmm0, xmm1, xmm2 at 0x[0-9a-f]+ <vadd\+0x2>"):
        lab.call("vadd", 7)
    assert hits == []
