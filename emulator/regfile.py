"""Reading many registers in one call into Unicorn.

The stock wrapper's reg_read costs about 2 µs per register and its reg_read_batch rebuilds
ctypes arrays on every call (unicorn.md §11); this calls uc_reg_read_batch on arrays made once.
"""
import ctypes

try:                                    # private names of unicorn 2.1's binding
    from unicorn.unicorn_py3.unicorn import uclib
except ImportError:                     # pragma: no cover - another binding: use the stock path
    uclib = None


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
