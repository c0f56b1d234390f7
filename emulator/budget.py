"""The instruction budget: how a runaway call is stopped.

unicorn's own (`emu_start(count=N)`) counts with a hook on every instruction, which costs 2-4x
on traced code. The native block hook (native/blockhook.c, built at install) counts per block
instead: each distinct block's instructions are counted once (capstone, here) and kept in C, the
blocks entered lately in a direct-mapped table read first; the total is compared with the run's
limit as each block is entered, so the same code stops at the same block every run, at most one
block past the budget. Without a C compiler at install, the lab falls back to unicorn's count and
says so once.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys

import unicorn

from . import asm
from .binding import uclib

COUNT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32)
CALL_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_uint64)


class _State(ctypes.Structure):
    _fields_ = [  # struct ftlab_budget's head, in blockhook.c's order
        ("total", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("stopped", ctypes.c_uint64),
    ]


ABI = 2  # blockhook.c's ftlab_budget_abi that this module's calls match


def _library():
    spec = importlib.util.find_spec("emulator._blockhook")
    if spec is None or spec.origin is None or uclib is None:
        return None
    lib = ctypes.CDLL(spec.origin)
    if not hasattr(lib, "ftlab_budget_abi") or ctypes.c_int.in_dll(lib, "ftlab_budget_abi").value != ABI:
        return None  # built from an older blockhook.c, whose functions take other arguments
    lib.ftlab_budget_new.restype = ctypes.POINTER(_State)
    lib.ftlab_budget_new.argtypes = [ctypes.c_uint, ctypes.c_void_p, COUNT_CALLBACK, CALL_CALLBACK]
    lib.ftlab_budget_add_call.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.ftlab_budget_clock.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.ftlab_budget_free.argtypes = [ctypes.c_void_p]
    lib.ftlab_budget_forget.argtypes = [ctypes.c_void_p]
    return lib


LIB = _library()
UNLIMITED = (1 << 64) - 1  # the limit of a run without a budget: the hook never stops it
_said: set[str] = set()  # what the lab has said on stderr already, once a process


class NativeBudget:
    """One machine's budget hook: arm(budget) before each run, disarm() after it."""

    def __init__(self, uc, arch, read):
        assert LIB is not None
        self._arch, self._read = arch, read
        self._outer: list[tuple[int, int, int]] = []  # the counts of the runs this one is inside
        self._count = COUNT_CALLBACK(self._insns)  # kept alive as long as the hook
        self.calls: dict = {}  # address -> the lab's callback(addr) there
        self._call = CALL_CALLBACK(lambda addr: self.calls[addr](addr))
        emu_stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p)
        shift = arch.insn_align.bit_length() - 1
        self.state = LIB.ftlab_budget_new(shift, emu_stop, self._count, self._call)
        if not self.state:
            raise MemoryError("the native budget hook's table")
        handle = ctypes.c_size_t()
        hook = ctypes.cast(LIB.ftlab_budget_block, ctypes.c_void_p)
        err = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            unicorn.UC_HOOK_BLOCK,
            hook,
            ctypes.cast(self.state, ctypes.c_void_p),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if err != unicorn.UC_ERR_OK:
            raise unicorn.UcError(err)

    def add_call(self, callback, addr: int) -> bool:
        """Dispatch callback(addr) at the block starting at addr from this hook (False: the set
        is full, the caller hooks it itself)."""
        if LIB.ftlab_budget_add_call(self.state, addr) != 0:
            return False
        self.calls[addr] = callback
        return True

    def _insns(self, addr: int, size: int) -> int:
        """The instructions in a block entered for the first time (called from C)."""
        return len(asm.starts(self._arch, self._read(addr, size), addr))

    def arm(self, budget: int) -> None:
        """Start counting a run with this budget. A run inside a hook has its own count, as
        unicorn's count= has: the outer run's is kept until disarm()."""
        s = self.state.contents
        self._outer.append((s.limit, s.stopped, s.total))
        s.limit, s.stopped = min(s.total + budget, UNLIMITED) if budget else UNLIMITED, 0

    def disarm(self) -> None:
        """The run is over: back to the count of the run around it, if any."""
        s = self.state.contents
        limit, s.stopped, start = self._outer.pop()
        s.limit = min(limit + s.total - start, UNLIMITED)  # the outer run's count leaves this one's out

    def clock_into(self, host_address: int | None) -> None:
        """From now on, as each block begins, write the instructions entered since now, less one,
        into the u64 at host_address (a guest word; the guest adds one as it stamps a record);
        None: stop."""
        LIB.ftlab_budget_clock(self.state, host_address)

    def forget(self) -> None:
        """The code changed: count every block anew."""
        LIB.ftlab_budget_forget(self.state)


def built() -> bool:
    """Whether the native hook was built at install."""
    return LIB is not None


def native_budget(uc, arch, read) -> NativeBudget | None:
    """The native hook, or None (unicorn's count= instead), said once per process."""
    if LIB is not None:
        return NativeBudget(uc, arch, read)
    if "not built" not in _said:
        _said.add("not built")
        print(
            "ftlab: note: the native budget hook was not built (no C compiler at install, or built "
            "from an older blockhook.c: reinstall): the "
            "instruction budget uses unicorn's per-instruction count, 2-4x slower (--budget 0 avoids it)",
            file=sys.stderr,
        )
    return None
