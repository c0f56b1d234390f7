"""What a dynamic_events definition is once parsed: limits, types, the kernel's error_log
texts, and the spec, fetch and context types the parser, evaluator and formatter share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from emulator.errors import FtlabError

U64 = (1 << 64) - 1
MAX_EVENT_NAME_LEN = 64  # a group or event name is at most 63 characters
MAX_ARG_NAME_LEN = 32
MAX_ARGSTR_LEN = 63  # one argument's text after NAME=, type included
MAX_TRACE_ARGS = 128
MAX_FETCH_OPS = 15  # FETCH_INSN_MAX (16) minus the END slot: %REG plus 14 derefs
MAX_FPROBE_DATA_WORDS = 15  # MAX_FPROBE_DATA_SIZE: an fprobe's entry data shares a header word with its id
MAX_STRING_SIZE = 4096  # PATH_MAX: a string reads at most 4095 bytes before its NUL
PARAM_MAX_STACK = 2048  # THREAD_SIZE / sizeof(long): 16 KiB stacks on x86_64 and arm64
KRETPROBE_MAXACTIVE_MAX = 4096
DEFAULT_TYPE = "x64"  # DEFAULT_FETCH_TYPE on 64-bit: x##BITS_PER_LONG
FAULT = "(fault)"  # evaluate()'s value for a fetch that faulted, printed as is
RESERVED_NAMES = frozenset(
    {
        "common_type",
        "common_flags",
        "common_preempt_count",
        "common_pid",
        "common_tgid",
        "__probe_ip",
        "__probe_ret_ip",
        "__probe_func",
    }
)

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
NO_BTFARG = "This variable is not found at this probe point"
NO_BTF_ENTRY = "No BTF entry for this probe point"
DOUBLE_ARGS = "$arg* can be used only once in the parameters"
NO_RETVAL = "This function returns 'void' type"
NOSUP_DAT_ARG = "Non pointer structure/union argument is not supported."
BAD_HYPHEN = "Failed to parse single hyphen. Forgot '>'?"
NOFENTRY_ARGS = "$arg* can be used only on function entry or exit"
NEED_STRING_TYPE = "$comm and immediate-string only accepts string type"
TOO_MANY_ARGS = "Too many arguments are specified"
TOO_MANY_EARGS = "Too many entry arguments specified"
EVENT_EXIST = "Given group/event name is already used by another event"
DIFF_PROBE_TYPE = "Probe type is different from existing probe"
DIFF_ARG_TYPE = "Argument type or name is different from existing probe"
SAME_PROBE = "There is already the exact same probe event"
# ftlab's own, where the kernel fails without an error_log line or accepts what ftlab does not model
EMPTY = "Empty probe definition"
BAD_KIND = "Unknown probe type (ftlab knows p, r, f and -)"
NO_SYMBOL = "Probe point (SYM or MEMADDR) is not specified"
NO_DELETE_TARGET = "'-:' needs [GRP/]EVENT and nothing after it"
NOT_MODELLED_TYPE = "Type is valid in the kernel but not modelled by ftlab"
NOT_MODELLED_UPROBE = "Uprobe events are not modelled by ftlab"
NOT_MODELLED_BTF = "Struct members and strings of BTF variables are valid in the kernel but not modelled by ftlab"


class ProbeSpecError(FtlabError):
    """A malformed probe definition: the kernel's error_log text, the bad token and its column."""

    def __init__(self, spec: str, message: str, token: str | None = None, column: int | None = None):
        self.spec, self.message, self.token, self.column = spec, message, token, column
        where = "" if token is None else f": '{_printable(token)}' (column {column})"
        super().__init__(f"bad probe spec '{_printable(spec)}': {message}{where}")


@dataclass(frozen=True)
class BtfProto:
    """What BTF says of one function, as the parser needs it (the caller reads it from wherever the
    lab keeps its BTF): each parameter's name and fetch type, and the return's; a fetch type is
    fetch_type_from_btf_type()'s, None where the kernel falls back to the default (x64)."""

    params: tuple[tuple[str, str | None], ...]
    ret: str | None
    void: bool  # the function returns void: $retval is refused (NO_RETVAL)


class FetchFault(Exception):
    """Raised by FetchContext.read for memory the probe cannot read (copy_from_kernel_nofault)."""


@dataclass(frozen=True)
class Fetch:
    """One fetch: op is reg, arg, retval, stack, stackp, comm, imm, imm_str, mem (@ADDR), sym
    (@SYM+OFFS) or deref (+OFFS(inner)). mem, sym and deref read memory."""

    op: str
    value: int | str | None = None  # register name, N of $argN/$stackN, immediate, address, symbol, text
    offset: int = 0  # deref offset, or @SYM's +/-OFFS
    inner: Fetch | None = None  # the deref's operand
    user: bool = False  # +uOFFS(...): a user-space dereference


@dataclass(frozen=True)
class FetchArg:
    name: str  # NAME= if given, else arg<position> (the kernel's name without BTF)
    fetch: Fetch
    type: str  # a key of TYPES


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # 'p' kprobe, 'r' kretprobe, 'f' fprobe, '-' delete
    group: str  # '-': '' for any group
    event: str  # '-': '' for every event of the group
    symbol: str  # '' for a MEMADDR kprobe and for '-'
    offset: int  # p SYM+OFFS
    is_return: bool  # r, p SYM%return, f SYM%return (or f with $retval)
    maxactive: int | None  # r[MAXACTIVE]
    args: tuple[FetchArg, ...]
    text: str  # the spec as given
    address: int | None = None  # p/r MEMADDR

    @property
    def entry_args(self) -> tuple[int, ...]:
        """A return probe's tp->entry_arg (trace_probe.c __store_entry_arg, 25f00e40ce79, v6.10):
        each N its $argN fetchargs read, once, in the order they first appear; the entry handler
        stores each in its own word of the entry data, in this order, and $argN at the exit reads
        that word. Empty: the kernel registers no entry handler and no entry data at all."""
        if not self.is_return:
            return ()
        found: dict[int, None] = {}
        for arg in self.args:
            f: Fetch | None = arg.fetch
            while f is not None:
                if f.op == "arg":
                    found[int(f.value or 0)] = None
                f = f.inner
        return tuple(found)


class FetchContext(Protocol):
    """What evaluation reads; the tracer supplies it at a hit."""

    comm: str

    def register(self, name: str) -> int: ...
    def argument(self, n: int) -> int: ...  # 1-based; on a return probe, its value at entry
    def return_value(self) -> int: ...
    def stack(self, n: int) -> int: ...  # $stackN: the N-th word on the stack at the probe
    def stack_pointer(self) -> int: ...
    def read(self, addr: int, size: int) -> bytes: ...  # raises FetchFault if unreadable
    def address_of(self, symbol: str) -> int: ...
    def symbolize(self, addr: int) -> str: ...  # 'sym+0x10/0x40' as %pS prints it


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _convert(value: int, type_: str) -> int:
    size, kind = TYPES[type_]
    bits = 8 * size
    value &= (1 << bits) - 1
    if kind == "s" and value >> (bits - 1):
        value -= 1 << bits
    return value
