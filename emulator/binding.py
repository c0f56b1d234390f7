"""Two hot paths around the stock unicorn binding, which is slow at both (docs/unicorn.md).

Its reg_read costs about 2 µs per register and its reg_read_batch rebuilds ctypes arrays on every
call: RegisterBatch calls uc_reg_read_batch on arrays made once. Its hooks run each callback
through two Python layers of its own: CallHooks registers a ctypes callback with uc_hook_add
directly, about 0.2 µs less per call into the lab. Both use private names of unicorn 2.1's
binding and fall back to the stock API without them.
"""

import ctypes

import unicorn

try:  # private names of unicorn 2.1's binding
    from unicorn.unicorn_py3.unicorn import uclib
except ImportError:  # pragma: no cover - another binding: use the stock path
    uclib = None

BLOCK_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


class RegisterBatch:
    def __init__(self, uc, ids: list[int]):
        self._uc, self._ids_list = uc, list(ids)
        n = len(ids)
        self._n = n
        self._ids = (ctypes.c_int * n)(*ids)
        self._vals = (ctypes.c_uint64 * n)()
        self._ptrs = (ctypes.c_void_p * n)(*[ctypes.addressof(self._vals) + 8 * i for i in range(n)])
        self._fast = uclib is not None and hasattr(uc, "_uch")

    def read(self) -> list[int]:
        if self._fast:
            uclib.uc_reg_read_batch(self._uc._uch, self._ids, self._ptrs, self._n)
            return self._vals[:]
        return [self._uc.reg_read(i) for i in self._ids_list]


class CallHooks:
    """Block hooks that call callback(addr), added straight to the engine. An exception in a
    callback stops emulation and is kept for the caller of emu_start to raise (`pending`): ctypes
    would otherwise print it and carry on."""

    def __init__(self, uc, budget=None):
        """budget: the machine's native budget hook (emulator.budget), which dispatches these
        callbacks itself, so that it stays the only block hook."""
        self._uc, self._budget = uc, budget
        self._native = uclib is not None and hasattr(uc, "_uch")
        self._alive = []  # the ctypes callbacks, which must outlive the engine's use
        self.pending: BaseException | None = None

    def add(self, callback, addr: int) -> None:
        def guarded(a):
            try:
                callback(a)
            except BaseException as err:
                self.pending = err
                uclib.uc_emu_stop(self._uc._uch)

        if self._budget is not None and self._budget.add_call(guarded, addr):
            return
        if not self._native:
            self._uc.hook_add(unicorn.UC_HOOK_BLOCK, lambda uc, a, size, _: callback(a), begin=addr, end=addr)
            return

        def entry(_uc, a, _size, _data):
            guarded(a)

        native = BLOCK_CALLBACK(entry)
        self._alive.append(native)
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(
            self._uc._uch,
            ctypes.byref(handle),
            unicorn.UC_HOOK_BLOCK,
            ctypes.cast(native, ctypes.c_void_p),
            None,
            ctypes.c_uint64(addr),
            ctypes.c_uint64(addr),
        )
        if err != unicorn.UC_ERR_OK:
            raise unicorn.UcError(err)

    def take(self) -> BaseException | None:
        """The exception a callback raised during the last run, if any (and forget it)."""
        err, self.pending = self.pending, None
        return err
