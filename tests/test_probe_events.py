"""Probe-event definitions (kprobe_events / dynamic_events): parsing, errors, evaluation, output."""

import pytest

from emulator.errors import FtlabError
from tracers import probe_events as pe
from tracers.probe_events import (
    FAULT,
    Fetch,
    FetchArg,
    FetchFault,
    ProbeSpecError,
    evaluate,
    format_args,
    format_value,
    parse,
)

X86 = [
    "ax",
    "bx",
    "cx",
    "dx",
    "si",
    "di",
    "bp",
    "sp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "ip",
    "flags",
    "cs",
    "ss",
    "orig_ax",
]
ARM64 = [f"x{n}" for n in range(31)] + ["sp", "pc", "pstate"]
REGSETS = [pytest.param(X86, "di", id="x86_64"), pytest.param(ARM64, "x0", id="arm64")]
SIXTEEN_EARGS = "f vfs_read%return $retval " + " ".join(f"$arg{n}" for n in range(1, 17))


def reg(name):
    return Fetch("reg", name)


def one_arg(spec, regs=X86):
    (arg,) = parse(spec, regs).args
    return arg


# -- every fetcharg form --------------------------------------------------------------------------


@pytest.mark.parametrize("regs,r", REGSETS)
@pytest.mark.parametrize(
    "text,tree",
    [
        ("%{r}", Fetch("reg", "{r}")),
        ("$arg1", Fetch("arg", 1)),
        ("$arg2048", Fetch("arg", 2048)),
        ("$stack", Fetch("stackp")),
        ("$stack0", Fetch("stack", 0)),
        ("$stack12", Fetch("stack", 12)),
        ("@jiffies", Fetch("sym", "jiffies", 0)),
        ("@jiffies+8", Fetch("sym", "jiffies", 8)),
        ("@jiffies-0x10", Fetch("sym", "jiffies", -16)),
        ("@0xffff888000001000", Fetch("mem", 0xFFFF888000001000)),
        ("@4096", Fetch("mem", 4096)),
        ("\\123", Fetch("imm", 123)),
        ("\\0x10", Fetch("imm", 16)),
        ("\\010", Fetch("imm", 8)),  # kstrtoul base 0: a leading 0 is octal
        ("\\-1", Fetch("imm", (1 << 64) - 1)),
        ("\\+7", Fetch("imm", 7)),
        ("+8(%{r})", Fetch("deref", None, 8, Fetch("reg", "{r}"))),
        ("-0x10(%{r})", Fetch("deref", None, -16, Fetch("reg", "{r}"))),
        ("+0(+8($arg1))", Fetch("deref", None, 0, Fetch("deref", None, 8, Fetch("arg", 1)))),
        ("+u4(%{r})", Fetch("deref", None, 4, Fetch("reg", "{r}"), user=True)),
        ("-u4(%{r})", Fetch("deref", None, -4, Fetch("reg", "{r}"), user=True)),
        ("+8(@jiffies)", Fetch("deref", None, 8, Fetch("sym", "jiffies", 0))),
        ("+0($stack)", Fetch("deref", None, 0, Fetch("stackp"))),
    ],
)
def test_fetch_forms_parse_to_their_tree(regs, r, text, tree):
    def fill(f):
        if f is None:
            return None
        value = f.value.format(r=r) if isinstance(f.value, str) else f.value
        return Fetch(f.op, value, f.offset, fill(f.inner), f.user)

    arg = one_arg("p vfs_read " + text.format(r=r), regs)
    assert arg == FetchArg("arg1", fill(tree), "x64")


@pytest.mark.parametrize("regs,r", REGSETS)
def test_retval_comm_and_immediate_string(regs, r):
    spec = parse(f'r myfunc $retval $comm $COMM \\"hi" c=%{r}:x32', regs)
    assert [(a.name, a.fetch, a.type) for a in spec.args] == [
        ("arg1", Fetch("retval"), "x64"),
        ("arg2", Fetch("comm"), "string"),
        ("arg3", Fetch("comm"), "string"),
        ("arg4", Fetch("imm_str", "hi"), "string"),
        ("c", Fetch("reg", r), "x32"),
    ]


@pytest.mark.parametrize("regs,r", REGSETS)
def test_register_names_are_per_arch(regs, r):
    other = "x0" if r == "di" else "di"
    assert one_arg(f"p f %{r}", regs).fetch == reg(r)
    with pytest.raises(ProbeSpecError) as e:
        parse(f"p f %{other}", regs)
    assert (e.value.message, e.value.token, e.value.column) == ("Invalid register name", f"%{other}", 5)


@pytest.mark.parametrize(
    "type_", ["u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "x8", "x16", "x32", "x64", "symbol"]
)
def test_types(type_):
    assert one_arg(f"p vfs_read %ax:{type_}").type == type_
    assert one_arg(f"p vfs_read v=+4(%ax):{type_}") == FetchArg("v", Fetch("deref", None, 4, reg("ax")), type_)


@pytest.mark.parametrize(
    "text,fetch",
    [
        ("+0(%di):string", Fetch("deref", None, 0, reg("di"))),
        ("@name:string", Fetch("sym", "name", 0)),
        ("@0x1000:string", Fetch("mem", 0x1000)),
        ("\\0x1000:string", Fetch("imm", 0x1000)),
        ("$comm:string", Fetch("comm")),
    ],
)
def test_string_is_accepted_on_memory_immediates_and_comm(text, fetch):
    assert one_arg("p f " + text) == FetchArg("arg1", fetch, "string")


# -- probe heads: defaults and names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text,kind,group,event,symbol,offset,is_return,maxactive",
    [
        ("p vfs_read", "p", "kprobes", "p_vfs_read_0", "vfs_read", 0, False, None),
        ("p vfs_read+0x10", "p", "kprobes", "p_vfs_read_16", "vfs_read", 16, False, None),
        ("p vfs_read+010", "p", "kprobes", "p_vfs_read_8", "vfs_read", 8, False, None),
        ("p vfs_read%return", "p", "kprobes", "r_vfs_read_0", "vfs_read", 0, True, None),
        ("p vfs_read+0%return", "p", "kprobes", "r_vfs_read_0", "vfs_read", 0, True, None),
        ("r vfs_read", "r", "kprobes", "r_vfs_read_0", "vfs_read", 0, True, None),
        ("r vfs_read+0", "r", "kprobes", "r_vfs_read_0", "vfs_read", 0, True, None),
        ("r vfs_read%return", "r", "kprobes", "r_vfs_read_0", "vfs_read", 0, True, None),
        ("r16 vfs_read", "r", "kprobes", "r_vfs_read_0", "vfs_read", 0, True, 16),
        ("r0x10:myret vfs_read", "r", "kprobes", "myret", "vfs_read", 0, True, 16),
        ("r4096:g/e vfs_read", "r", "g", "e", "vfs_read", 0, True, 4096),
        ("p:myprobe do_sys_open", "p", "kprobes", "myprobe", "do_sys_open", 0, False, None),
        ("p:my-grp/ev2 f", "p", "my-grp", "ev2", "f", 0, False, None),
        ("p:grp.ev f", "p", "grp", "ev", "f", 0, False, None),
        ("p:grp/ f+4", "p", "grp", "p_f_4", "f", 4, False, None),
        ("p mod:sym", "p", "kprobes", "p_mod_sym_0", "mod:sym", 0, False, None),
        ("p foo.isra.0", "p", "kprobes", "p_foo_isra_0_0", "foo.isra.0", 0, False, None),
        ("f vfs_read", "f", "fprobes", "vfs_read__entry", "vfs_read", 0, False, None),
        ("f vfs_read%return", "f", "fprobes", "vfs_read__exit", "vfs_read", 0, True, None),
        ("f:grp/ vfs_read%return", "f", "grp", "vfs_read__exit", "vfs_read", 0, True, None),
        ("f:myfp vfs_read", "f", "fprobes", "myfp", "vfs_read", 0, False, None),
        ("f foo.cold", "f", "fprobes", "foo_cold__entry", "foo.cold", 0, False, None),
        ("f vfs_*", "f", "fprobes", "vfs____entry", "vfs_*", 0, False, None),
        # The fprobe parser makes a probe whose arguments use $retval an exit probe.
        ("f vfs_read $arg1 $retval", "f", "fprobes", "vfs_read__exit", "vfs_read", 0, True, None),
        ("f vfs_read x=+0($retval):u8", "f", "fprobes", "vfs_read__exit", "vfs_read", 0, True, None),
    ],
)
def test_heads_and_default_names(text, kind, group, event, symbol, offset, is_return, maxactive):
    spec = parse(text, X86)
    assert (
        spec.kind,
        spec.group,
        spec.event,
        spec.symbol,
        spec.offset,
        spec.is_return,
        spec.maxactive,
        spec.address,
        spec.text,
    ) == (kind, group, event, symbol, offset, is_return, maxactive, None, text)


def test_memaddr_probe():
    spec = parse("p 0xffffffff81000000 %ax", X86)
    assert (spec.symbol, spec.address, spec.event) == ("", 0xFFFFFFFF81000000, "p_0xffffffff81000000")
    assert parse("r 4096", X86).event == "r_0x0000000000001000"


def test_name_length_limits():
    assert parse("p:" + "e" * 63 + " f", X86).event == "e" * 63
    assert parse("p:" + "g" * 63 + "/e f", X86).group == "g" * 63
    # a default name is cut to 63 characters (snprintf into MAX_EVENT_NAME_LEN)
    assert parse("f " + "s" * 70, X86).event == "s" * 63
    assert parse("p f " + "a" * 32 + "=%ax", X86).args[0].name == "a" * 32


def test_argument_names_default_by_position():
    spec = parse("p vfs_read a=%di %si b=+8(%dx):u32 $arg4", X86)
    assert [a.name for a in spec.args] == ["a", "arg2", "b", "arg4"]
    assert [a.type for a in spec.args] == ["x64", "x64", "u32", "x64"]


@pytest.mark.parametrize(
    "text", ["p vfs_read%return $arg1 $retval", "r vfs_read $arg2 $retval", "f vfs_read%return $arg1 $retval"]
)
def test_return_probes_take_retval_and_entry_arguments(text):
    args = parse(text, X86).args
    assert [a.fetch for a in args] == [Fetch("arg", int(text.split("$arg")[1][0])), Fetch("retval")]


def test_delete_is_parsed_as_kind_minus():
    spec = parse("-:kprobes/myprobe", X86)
    assert (spec.kind, spec.group, spec.event, spec.symbol, spec.args) == ("-", "kprobes", "myprobe", "", ())
    assert (parse("-:myprobe", X86).group, parse("-:myprobe", X86).event) == ("", "myprobe")
    assert (parse("-:grp/", X86).group, parse("-:grp/", X86).event) == ("grp", "")


def test_nesting_limit_counts_fetch_slots():
    deep = "+0(" * 14 + "%ax" + ")" * 14  # %ax + 14 derefs = 15 slots: the limit
    f = one_arg("p f " + deep).fetch
    for _ in range(14):
        assert (f.op, f.offset) == ("deref", 0)
        f = f.inner
    assert f == reg("ax")
    one_arg("p f " + "+0(" * 12 + "@a" + ")" * 12)  # @SYM takes 3 slots: 12 derefs fit


# -- errors ----------------------------------------------------------------------------------------

G64 = "g" * 64
E64 = "e" * 64
DEEP15 = "+0(" * 15 + "%di" + ")" * 15
DEEP13SYM = "+0(" * 13 + "@a" + ")" * 13


@pytest.mark.parametrize(
    "spec,message,token,column",
    [
        ("x:foo vfs_read", "Unknown probe type (ftlab knows p, r, f and -)", "x:foo", 1),
        ("t:foo sched_switch", "Unknown probe type (ftlab knows p, r, f and -)", "t:foo", 1),
        ("p:foo", "Probe point (SYM or MEMADDR) is not specified", "p:foo", 7),
        ("p /bin/sh:0x100", "Uprobe events are not modelled by ftlab", "/bin/sh:0x100", 3),
        ("p:/foo vfs_read", "Group name is not specified", "/foo", 3),
        ("p:1grp/foo vfs_read", "Group name must follow the same rules as C identifiers", "1grp", 3),
        (f"p:{G64}/e vfs_read", "Group name is too long", G64, 3),
        ("p: vfs_read", "Event name is not specified", "", 3),
        ("p:grp/1foo vfs_read", "Event name must follow the same rules as C identifiers", "1foo", 7),
        ("p:my-probe vfs_read", "Event name must follow the same rules as C identifiers", "my-probe", 3),
        (f"p:{E64} vfs_read", "Event name is too long", E64, 3),
        ("p:foo vfs_read $retval", "$retval is not available on probe", "$retval", 16),
        ("p vfs_read+4 x=$retval", "$retval is not available on probe", "$retval", 16),
        # kernel quirk: an address kretprobe does not get the RETURN flag
        ("r 0xffffffff81000000 $retval", "$retval is not available on probe", "$retval", 22),
        ("p5:foo vfs_read", "Maxactive is only for function exit", "5", 2),
        ("p5 vfs_read%return", "Maxactive is only for function exit", "5", 2),
        ("r0 vfs_read", "Invalid maxactive number", "0", 2),
        ("r5x vfs_read", "Invalid maxactive number", "5x", 2),
        ("rx:foo vfs_read", "Invalid maxactive number", "x", 2),
        ("r4097 vfs_read", "Maxactive is too big", "4097", 2),
        ("f8 vfs_read%return", "Invalid maxactive number", "8", 2),
        ("f vfs_read+4", "Invalid probed address or symbol", "vfs_read+4", 3),
        ("p vfs_read-4", "Invalid probed address or symbol", "vfs_read-4", 3),
        ("p vfs_read+4x", "Invalid probed address or symbol", "vfs_read+4x", 3),
        ("p -4", "Invalid probed address or symbol", "-4", 3),
        ("p %return", "Invalid probed address or symbol", "%return", 3),
        ("r vfs_read+4", "Retprobe address must be an function entry", "vfs_read+4", 3),
        ("p vfs_read+4%return", "Retprobe address must be an function entry", "vfs_read+4%return", 3),
        ("p vfs_read%exit", "Invalid probed address suffix", "%exit", 11),
        ("f vfs_read%returns", "Invalid probed address suffix", "%returns", 11),
        ("p vfs_read $arg0", "Invalid argument number", "$arg0", 12),
        ("p vfs_read $arg2049", "Invalid argument number", "$arg2049", 12),
        ("p vfs_read x=$argx", "Invalid $-valiable specified", "$argx", 14),
        ("p vfs_read $argx", "Invalid $-valiable specified", "$argx", 12),
        ("p vfs_read $stack2049", "Invalid stack number", "$stack2049", 12),
        ("p vfs_read $stack1x", "Invalid $-valiable specified", "$stack1x", 12),
        ("p:myprobe vfs_read $foo", "Invalid $-valiable specified", "$foo", 20),
        ("p vfs_read+8 $arg1", "$arg* can be used only on function entry or exit", "$arg1", 14),
        ("p vfs_read+8 x=+0($arg1)", "$arg* can be used only on function entry or exit", "$arg1", 19),
        ("p vfs_read $arg*", "BTF is not available or not supported", "$arg*", 12),
        ("p vfs_read file", "BTF is not available or not supported", "file", 12),
        ("p vfs_read %xx", "Invalid register name", "%xx", 12),
        ("f vfs_read %ax", "Invalid $-valiable specified", "%ax", 12),
        ("p vfs_read +8(%di", "Dereference brace is not closed", "+8(%di", 18),
        ("p vfs_read +8%di", "Dereference needs a brace", "+8%di", 12),
        ("p vfs_read +x8(%di)", "Invalid dereference offset", "+x8", 12),
        ("p vfs_read --8(%di)", "Invalid dereference offset", "--8", 12),
        ("p vfs_read +8(%di)x", "Invalid fetch argument", "x", 19),
        ("p vfs_read 123", "Invalid fetch argument", "123", 12),
        ("p vfs_read " + DEEP15, "Dereference is too much nested", DEEP15, 15),
        ("p vfs_read " + DEEP13SYM, "Dereference is too much nested", DEEP13SYM, 15),
        ("p vfs_read %di:foo", "Unknown type is specified", "foo", 16),
        ("p vfs_read %di:", "Unknown type is specified", "", 16),
        ("p vfs_read +0(%di):ustring", "Type is valid in the kernel but not modelled by ftlab", "ustring", 20),
        ("p vfs_read %di:b4@0/32", "Type is valid in the kernel but not modelled by ftlab", "b4@0/32", 16),
        ("p vfs_read +0(%di):x8[4]", "Type is valid in the kernel but not modelled by ftlab", "x8[4]", 20),
        ("p vfs_read %di:string", "String accepts only memory argument", "string", 16),
        ("p vfs_read $arg1:string", "String accepts only memory argument", "string", 18),
        ("p vfs_read $comm:u32", "$comm and immediate-string only accepts string type", "u32", 18),
        ("p vfs_read +0($comm)", "$comm can not be dereferenced", "$comm", 15),
        ('p vfs_read +0(\\"s")', "$comm can not be dereferenced", '\\"s"', 15),
        ("p vfs_read a=%di a=%si", "This argument name is already used", "a", 18),
        ("p vfs_read arg2=%di %si", "This argument name is already used", "arg2", 21),
        ("p vfs_read __probe_ip=%di", "This argument name is already used", "__probe_ip", 12),
        ("p vfs_read 1a=%di", "Argument name must follow the same rules as C identifiers", "1a", 12),
        ("p vfs_read a-b=%di", "Argument name must follow the same rules as C identifiers", "a-b", 12),
        ("p vfs_read =%di", "Argument name is not specified", "=%di", 12),
        ("p vfs_read " + "a" * 33 + "=%di", "Argument name is too long", "a" * 33, 12),
        ("p vfs_read x=", "No argument expression", "x=", 14),
        ("p vfs_read x=\\" + "1" * 63, "Argument expression is too long", "\\" + "1" * 63, 14),
        ("p vfs_read \\abc", "Invalid immediate value", "abc", 13),
        ('p vfs_read \\"abc', "String is not closed with '\"'", '\\"abc', 17),
        ("p vfs_read @0xzz", "Invalid memory address", "@0xzz", 12),
        ("p vfs_read @", "Invalid memory address", "@", 12),
        ("p vfs_read @+0x10", "File offset is not available with kprobe", "@+0x10", 12),
        ("p vfs_read " + " ".join(["%di"] * 129), "Too many arguments are specified", "%di", 12),
        # an fprobe's entry data holds at most 15 words: one per $argN a return event reads
        (SIXTEEN_EARGS, "Too many entry arguments specified", "$retval", 19),
        ("-:", "Event name is not specified", "-:", 3),
        ("-:foo vfs_read", "'-:' needs [GRP/]EVENT and nothing after it", "-:foo", 1),
        ("-foo", "'-:' needs [GRP/]EVENT and nothing after it", "-foo", 1),
    ],
)
def test_malformed_specs(spec, message, token, column):
    with pytest.raises(ProbeSpecError) as e:
        parse(spec, X86)
    err = e.value
    assert (err.message, err.token, err.column) == (message, token, column)
    assert str(err) == f"bad probe spec '{spec}': {message}: '{token}' (column {column})"


@pytest.mark.parametrize("spec,shown", [("", ""), ("  \t ", "  \\t ")])
def test_empty_spec(spec, shown):
    with pytest.raises(ProbeSpecError) as e:
        parse(spec, X86)
    assert str(e.value) == f"bad probe spec '{shown}': Empty probe definition"


def test_error_is_an_ftlab_error_on_one_line():
    with pytest.raises(FtlabError) as e:
        parse("p vfs_read\n$foo", X86)
    assert str(e.value) == ("bad probe spec 'p vfs_read\\n$foo': Invalid $-valiable specified: '$foo' (column 12)")


# -- evaluation and output -------------------------------------------------------------------------

BASE = 0x1000


class FakeCtx:
    """A FetchContext over a dict of registers and one bytes 'memory' at BASE."""

    def __init__(self, mem=b"", regs=None, args=(), retval=0, stack=(), sp=0, comm="cat", symbols=None):
        self.mem, self.regs, self.args, self.retval = bytes(mem), regs or {}, args, retval
        self.stack_words, self.sp, self.comm = stack, sp, comm
        self.symbols = symbols or {}  # name -> (address, size)
        self.reads = []

    def register(self, name):
        return self.regs[name]

    def argument(self, n):
        return self.args[n - 1]

    def return_value(self):
        return self.retval

    def stack(self, n):
        return self.stack_words[n]

    def stack_pointer(self):
        return self.sp

    def read(self, addr, size):
        self.reads.append((addr, size))
        off = addr - BASE
        if off < 0 or off + size > len(self.mem):
            raise FetchFault(f"{addr:#x}")
        return self.mem[off : off + size]

    def address_of(self, symbol):
        return self.symbols[symbol][0]

    def symbolize(self, addr):
        for name, (start, size) in self.symbols.items():
            if start <= addr < start + size:
                return f"{name}+{addr - start:#x}/{size:#x}"
        return f"{addr:#x}"


def le(value, size=8):
    return (value & (1 << 8 * size) - 1).to_bytes(size, "little")


def value_of(text, ctx, regs=X86, kind="p"):
    arg = one_arg(f"{kind} f {text}", regs)
    v = evaluate(arg, ctx)
    return v, format_value(arg, v)


@pytest.mark.parametrize(
    "type_,raw,value,shown",
    [
        ("u8", 0x1FF, 0xFF, "255"),
        ("s8", 0xFF, -1, "-1"),
        ("s8", 0x17F, 127, "127"),
        ("x8", 0x1AB, 0xAB, "0xab"),
        ("u16", 0x12345, 0x2345, "9029"),
        ("s16", 0x8000, -32768, "-32768"),
        ("x16", 0xFFFFF, 0xFFFF, "0xffff"),
        ("u32", 0x100000005, 5, "5"),
        ("s32", 0xFFFFFFFF, -1, "-1"),
        ("x32", 0xDEADBEEFCAFE, 0xBEEFCAFE, "0xbeefcafe"),
        ("u64", (1 << 64) - 1, (1 << 64) - 1, "18446744073709551615"),
        ("s64", (1 << 64) - 2, -2, "-2"),
        ("x64", 0xDEADBEEF, 0xDEADBEEF, "0xdeadbeef"),
    ],
)
def test_register_values_truncate_and_sign_extend(type_, raw, value, shown):
    ctx = FakeCtx(regs={"ax": raw})
    assert value_of(f"%ax:{type_}", ctx) == (value, shown)


def test_default_type_is_x64():
    assert value_of("%ax", FakeCtx(regs={"ax": 255})) == (255, "0xff")


@pytest.mark.parametrize(
    "type_,value,shown",
    [
        ("u8", 0xF0, "240"),
        ("s8", -16, "-16"),
        ("s16", -3600, "-3600"),
        ("x32", 0xF3F2F1F0, "0xf3f2f1f0"),
        ("s64", -579005069656919568, "-579005069656919568"),
        ("u64", 0xF7F6F5F4F3F2F1F0, "17867739004052632048"),
    ],
)
def test_memory_reads_only_the_type_size(type_, value, shown):
    ctx = FakeCtx(mem=bytes(range(0xF0, 0xF8)), regs={"di": BASE})
    assert value_of(f"+0(%di):{type_}", ctx) == (value, shown)
    assert ctx.reads == [(BASE, pe.TYPES[type_][0])]


def test_u16_at_the_very_end_of_memory_reads_two_bytes():
    ctx = FakeCtx(mem=b"\0" * 6 + le(0x1234, 2), regs={"si": BASE})
    assert value_of("+6(%si):u16", ctx) == (0x1234, "4660")


@pytest.mark.parametrize("regs,r", REGSETS)
def test_deref_chains_and_negative_offsets(regs, r):
    mem = bytearray(0x40)
    mem[0x00:0x08] = le(BASE + 0x20)  # *(arg1) = p
    mem[0x28:0x30] = le(0x1122334455667788)  # *(p + 8)
    mem[0x18:0x1C] = le(0xFFFFFFF6, 4)  # at reg - 8
    ctx = FakeCtx(mem=mem, regs={r: BASE + 0x20}, args=(BASE,))
    assert value_of("+8(+0($arg1))", ctx, regs) == (0x1122334455667788, "0x1122334455667788")
    assert value_of(f"-8(%{r}):s32", ctx, regs) == (-10, "-10")
    assert value_of(f"+u8(%{r}):u32", ctx, regs) == (0x55667788, "1432778632")
    assert value_of("+8(+0(+0($stack))):u8", FakeCtx(mem=mem, sp=BASE + 0x38, args=(), regs={}), regs) == (FAULT, FAULT)


def test_stack_retval_args_immediates_and_symbols():
    mem = le(0xABCDEF) + le(0x42)
    ctx = FakeCtx(
        mem=mem,
        regs={},
        args=(7, 8),
        retval=(1 << 64) - 22,
        stack=(0x11, 0x22),
        sp=0x7FFC0,
        symbols={"jiffies": (BASE + 8, 8)},
    )
    assert value_of("$stack1", ctx) == (0x22, "0x22")
    assert value_of("$stack:u64", ctx) == (0x7FFC0, "524224")
    assert value_of("$arg2:u8", ctx) == (8, "8")
    assert value_of("$retval:s32", ctx, kind="r") == (-22, "-22")
    assert value_of("\\-1:s64", ctx) == (-1, "-1")
    assert value_of("\\0x1ff:u8", ctx) == (255, "255")
    assert value_of("@jiffies:u32", ctx) == (0x42, "66")
    assert value_of("@jiffies-8", ctx) == (0xABCDEF, "0xabcdef")
    assert value_of(f"@{BASE + 8:#x}:u16", ctx) == (0x42, "66")


def test_strings_read_up_to_nul_at_the_fetched_address():
    mem = bytearray(0x40)
    mem[0:12] = b"hello\0world\0"
    mem[0x20:0x28] = le(BASE + 6)  # a char * to "world"
    ctx = FakeCtx(mem=mem, regs={"di": BASE, "si": BASE + 0x20}, symbols={"banner": (BASE + 6, 6)})
    assert value_of("+0(%di):string", ctx) == (b"hello", '"hello"')
    # +OFFS(FETCH):string reads the string at FETCH+OFFS, not at *(FETCH+OFFS)
    assert value_of("+6(%di):string", ctx) == (b"world", '"world"')
    assert value_of("+0(+0(%si)):string", ctx) == (b"world", '"world"')
    assert value_of("@banner:string", ctx) == (b"world", '"world"')
    assert value_of(f"\\{BASE:#x}:string", ctx) == (b"hello", '"hello"')
    assert value_of(f"@{BASE + 5:#x}:string", ctx) == (b"", '""')
    assert value_of("$comm", ctx) == (b"cat", '"cat"')
    assert value_of('\\"hi"', ctx) == (b"hi", '"hi"')


def test_string_near_the_end_of_readable_memory():
    ctx = FakeCtx(mem=b"x" * 60 + b"abc\0", regs={"di": BASE + 60, "si": BASE + 61})
    assert value_of("+0(%di):string", ctx) == (b"abc", '"abc"')
    no_nul = FakeCtx(mem=b"x" * 64, regs={"di": BASE + 60})
    assert value_of("+0(%di):string", no_nul) == (FAULT, "(fault)")


def test_string_is_capped_at_max_string_size():
    ctx = FakeCtx(mem=b"A" * 5000, regs={"di": BASE})
    v, _ = value_of("+0(%di):string", ctx)
    assert v == b"A" * 4095


def test_symbol_type_prints_what_the_context_symbolizes():
    mem = le(0xFFFFFFFF81000234)
    ctx = FakeCtx(
        mem=mem,
        regs={"di": 0xFFFFFFFF81000110, "si": BASE, "ax": 0x10},
        symbols={"vfs_read": (0xFFFFFFFF81000100, 0x40), "ksys_read": (0xFFFFFFFF81000200, 0x80)},
    )
    assert value_of("%di:symbol", ctx) == ("vfs_read+0x10/0x40", "vfs_read+0x10/0x40")
    assert value_of("+0(%si):symbol", ctx) == ("ksys_read+0x34/0x80", "ksys_read+0x34/0x80")
    assert value_of("%ax:symbol", ctx) == ("0x10", "0x10")


@pytest.mark.parametrize(
    "text",
    ["+0(%di)", "+0(%di):u8", "+0(%di):string", "+0(+0(%si)):u8", "+8(+0(%si)):string", "+0(%di):symbol", "@0x10:u32"],
)
def test_faults_print_fault(text):
    ctx = FakeCtx(mem=le(0x10), regs={"di": 0xDEAD0000, "si": BASE})
    assert value_of(text, ctx) == (FAULT, "(fault)")


def test_format_value_normalizes_raw_integers():
    assert format_value(FetchArg("a", reg("ax"), "s8"), 0xFF) == "-1"
    assert format_value(FetchArg("a", reg("ax"), "x16"), -1) == "0xffff"
    assert format_value(FetchArg("a", reg("ax"), "symbol"), 0xFFFFFFFF81000000) == "0xffffffff81000000"
    assert format_value(FetchArg("a", reg("ax"), "string"), b"\xffok") == '"\\xffok"'


def test_format_args_as_appended_to_an_event_line():
    spec = parse("p vfs_read fd=%di:s32 buf=%si count=%dx:u64 name=+0(%di):string $comm fn=%ax:symbol", X86)
    ctx = FakeCtx(
        mem=b"",
        regs={"di": 0xFFFFFFF7, "si": 0x7FFD1000, "dx": 4096, "ax": 0xFFFFFFFF81000104},
        symbols={"vfs_read": (0xFFFFFFFF81000100, 0x340)},
    )
    values = [evaluate(a, ctx) for a in spec.args]
    assert format_args(spec.args, values) == (
        ' fd=-9 buf=0x7ffd1000 count=4096 name=(fault) arg5="cat" fn=vfs_read+0x4/0x340'
    )
    assert format_args((), []) == ""
    with pytest.raises(ValueError, match="zip"):
        format_args(spec.args, values[:-1])
