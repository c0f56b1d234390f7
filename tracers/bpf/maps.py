"""BPF maps in guest memory, with the kernel's semantics and errnos: array (kernel/bpf/arraymap.c),
hash (kernel/bpf/hashtab.c, preallocated), per-CPU array with one CPU, stack trace (its storage;
the helper computes ids) and ring buffer (kernel/bpf/ringbuf.c). Programs get guest pointers to
values; Python reads and writes the same memory."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from emulator.machine import Machine

from .btf import Btf
from .isa import BpfError

# enum bpf_map_type (include/uapi/linux/bpf.h)
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_STACK_TRACE = 7
BPF_MAP_TYPE_RINGBUF = 27
MAP_TYPE_NAMES = {
    BPF_MAP_TYPE_HASH: "hash",
    BPF_MAP_TYPE_ARRAY: "array",
    BPF_MAP_TYPE_PERCPU_ARRAY: "percpu_array",
    BPF_MAP_TYPE_STACK_TRACE: "stack_trace",
    BPF_MAP_TYPE_RINGBUF: "ringbuf",
}
# update flags
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
# map_flags libbpf gives global data maps
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10
# ring buffer: record header bits and the helpers' flags
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8
BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP = 1, 2
PAGE_SIZE = 4096

REGION = "bpf"  # the guest memory maps are allocated in
_BPF_MAP_SIZE = 64  # what stands for struct bpf_map: a distinct guest address per map
_U32 = struct.Struct("<I")


def _round8(n: int) -> int:
    return -(-n // 8) * 8


@dataclass(frozen=True)
class MapSpec:
    """A map as the object declares it: a BTF-defined map in `.maps`, or a global data section."""

    name: str  # as libbpf names it: the variable, or "<obj>.bss"
    type: int  # BPF_MAP_TYPE_*
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int = 0
    key_type_id: int = 0  # BTF ids for dumps (0: none, as global data maps' keys)
    value_type_id: int = 0
    section: str = ".maps"  # the ELF section it comes from
    offset: int = 0  # the variable's offset in `.maps`
    init: bytes = b""  # global data: the section's contents (.bss: none)

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, str(self.type))


class Map:
    """One map. `addr` stands for the kernel's `struct bpf_map *` (what an lddw of the map loads)."""

    def __init__(self, machine: Machine, spec: MapSpec, btf: Btf | None = None):
        self.machine = machine
        self.spec = spec
        self.btf = btf  # the object's types, for dumps
        self.name = spec.name
        self.addr = machine.alloc(REGION, _BPF_MAP_SIZE, 64)

    def fail(self, why: str) -> BpfError:
        return BpfError(f"map '{self.name}' ({self.spec.type_name}): {why}")

    def lookup(self, key: bytes) -> int:
        """Guest address of the value, or 0 (NULL)."""
        raise NotImplementedError

    def update(self, key: bytes, value: bytes, flags: int) -> int:
        """0 or -errno."""
        raise NotImplementedError

    def delete(self, key: bytes) -> int:
        raise NotImplementedError

    def items(self) -> list[tuple[bytes, bytes]]:
        """(key, value) in the order bpf_map_get_next_key walks them."""
        raise NotImplementedError


class ArrayMap(Map):
    """BPF_MAP_TYPE_ARRAY: max_entries values, each round_up(value_size, 8) apart (array_map_alloc);
    global data maps are arrays of one value holding their section."""

    def __init__(self, machine: Machine, spec: MapSpec, btf: Btf | None = None):
        super().__init__(machine, spec, btf)
        if spec.key_size != 4 or spec.value_size == 0 or spec.max_entries == 0:
            raise self.fail(
                f"key_size {spec.key_size} (must be 4), value_size {spec.value_size}, "
                f"max_entries {spec.max_entries}: -EINVAL"
            )
        self.stride = _round8(spec.value_size)
        self.values = machine.alloc(REGION, self.stride * spec.max_entries, 64)
        machine.write(self.values, bytes(self.stride * spec.max_entries))
        if spec.init:
            machine.write(self.values, spec.init)

    def _index(self, key: bytes) -> int:
        return _U32.unpack(key[:4])[0]

    def lookup(self, key: bytes) -> int:
        i = self._index(key)
        return self.values + i * self.stride if i < self.spec.max_entries else 0

    def update(self, key: bytes, value: bytes, flags: int) -> int:
        # array_map_update_elem: flag check, then the index, then NOEXIST (every element exists)
        if flags > BPF_EXIST:
            return -errno.EINVAL
        i = self._index(key)
        if i >= self.spec.max_entries:
            return -errno.E2BIG
        if flags == BPF_NOEXIST:
            return -errno.EEXIST
        self.machine.write(self.values + i * self.stride, value[: self.spec.value_size])
        return 0

    def delete(self, key: bytes) -> int:
        return -errno.EINVAL  # array_map_delete_elem

    def items(self) -> list[tuple[bytes, bytes]]:
        return [
            (_U32.pack(i), self.machine.read(self.values + i * self.stride, self.spec.value_size))
            for i in range(self.spec.max_entries)
        ]


class PercpuArrayMap(ArrayMap):
    """BPF_MAP_TYPE_PERCPU_ARRAY on the lab's one CPU: CPU 0's values are the array."""


class HashMap(Map):
    """BPF_MAP_TYPE_HASH, preallocated as by default (no BPF_F_NO_PREALLOC): max_entries value slots,
    a full map refuses a new key with -E2BIG. An update of an existing key writes its value in
    place; the walk is in insertion order (the kernel's follows its bucket hash)."""

    def __init__(self, machine: Machine, spec: MapSpec, btf: Btf | None = None):
        super().__init__(machine, spec, btf)
        if spec.key_size == 0 or spec.value_size == 0 or spec.max_entries == 0:
            raise self.fail(
                f"key_size {spec.key_size}, value_size {spec.value_size}, max_entries {spec.max_entries}: -EINVAL"
            )
        self.stride = _round8(spec.value_size)
        self.values = machine.alloc(REGION, self.stride * spec.max_entries, 64)
        self.slots: dict[bytes, int] = {}  # key -> slot
        self.free = list(range(spec.max_entries - 1, -1, -1))  # popped from the end: slot 0 first

    def lookup(self, key: bytes) -> int:
        slot = self.slots.get(bytes(key[: self.spec.key_size]))
        return 0 if slot is None else self.values + slot * self.stride

    def update(self, key: bytes, value: bytes, flags: int) -> int:
        # htab_map_update_elem -> check_flags, then alloc_htab_elem's -E2BIG from an empty freelist
        key = bytes(key[: self.spec.key_size])
        if flags > BPF_EXIST:
            return -errno.EINVAL
        slot = self.slots.get(key)
        if slot is not None and flags == BPF_NOEXIST:
            return -errno.EEXIST
        if slot is None and flags == BPF_EXIST:
            return -errno.ENOENT
        if slot is None:
            if not self.free:
                return -errno.E2BIG
            slot = self.slots[key] = self.free.pop()
        self.machine.write(self.values + slot * self.stride, value[: self.spec.value_size].ljust(self.stride, b"\0"))
        return 0

    def delete(self, key: bytes) -> int:
        slot = self.slots.pop(bytes(key[: self.spec.key_size]), None)
        if slot is None:
            return -errno.ENOENT
        self.free.append(slot)
        return 0

    def items(self) -> list[tuple[bytes, bytes]]:
        return [
            (k, self.machine.read(self.values + s * self.stride, self.spec.value_size)) for k, s in self.slots.items()
        ]


class StackTraceMap(HashMap):
    """BPF_MAP_TYPE_STACK_TRACE: u32 stack id -> value_size/8 return addresses (stack_map_alloc's
    checks); bpf_get_stackid fills it."""

    def __init__(self, machine: Machine, spec: MapSpec, btf: Btf | None = None):
        if spec.key_size != 4 or spec.value_size < 8 or spec.value_size % 8:
            raise BpfError(
                f"map '{spec.name}' (stack_trace): key_size {spec.key_size} (must be 4), "
                f"value_size {spec.value_size} (a multiple of 8): -EINVAL"
            )
        super().__init__(machine, spec, btf)


class RingBufMap(Map):
    """BPF_MAP_TYPE_RINGBUF: struct bpf_ringbuf's page of bookkeeping, consumer_pos and
    producer_pos pages, then max_entries bytes of data (RINGBUF_NR_META_PAGES = 3). Records are an
    8-byte header (len with the BUSY and DISCARD bits, pg_off) and the data, 8-byte aligned. Nothing
    consumes: the data is never mapped twice, as no record wraps."""

    META_PAGES = 3

    def __init__(self, machine: Machine, spec: MapSpec, btf: Btf | None = None):
        super().__init__(machine, spec, btf)
        size = spec.max_entries
        if spec.key_size or spec.value_size or size < PAGE_SIZE or size & (size - 1):
            raise self.fail(
                f"key_size {spec.key_size}, value_size {spec.value_size} (both must be 0), "
                f"max_entries {size} (a power of 2 multiple of {PAGE_SIZE}): -EINVAL"
            )
        self.rb = machine.alloc(REGION, self.META_PAGES * PAGE_SIZE + size, PAGE_SIZE)
        self.data = self.rb + self.META_PAGES * PAGE_SIZE
        self.mask = size - 1
        self.consumer_pos = self.producer_pos = 0
        machine.write(self.rb, bytes(self.META_PAGES * PAGE_SIZE + size))

    def _set_producer(self, pos: int) -> None:
        self.producer_pos = pos
        self.machine.write(self.rb + 2 * PAGE_SIZE, struct.pack("<Q", pos))

    def reserve(self, size: int, flags: int = 0) -> int:
        """bpf_ringbuf_reserve -> __bpf_ringbuf_reserve: the record's data address, or 0."""
        length = _round8(size + BPF_RINGBUF_HDR_SZ)
        if flags or size > 0xFFFF_FFFF // 4 or length > self.mask + 1:
            return 0
        if self.producer_pos + length - self.consumer_pos > self.mask:
            return 0  # the producer may not get more than size - 1 ahead
        hdr = self.data + (self.producer_pos & self.mask)
        pg_off = (hdr - self.rb) // PAGE_SIZE  # bpf_ringbuf_rec_pg_off
        self.machine.write(hdr, struct.pack("<II", size | BPF_RINGBUF_BUSY_BIT, pg_off))
        self._set_producer(self.producer_pos + length)
        return hdr + BPF_RINGBUF_HDR_SZ

    def _commit(self, sample: int, discard: bool) -> None:
        """bpf_ringbuf_commit: clear BUSY, set DISCARD if discarded."""
        hdr = sample - BPF_RINGBUF_HDR_SZ
        if not self.data <= hdr < self.data + self.mask + 1:
            raise self.fail(f"{sample:#x} is not a record of this ring buffer")
        (length,) = _U32.unpack(self.machine.read(hdr, 4))
        if not length & BPF_RINGBUF_BUSY_BIT:
            raise self.fail(f"the record at {sample:#x} was already submitted or discarded")
        length ^= BPF_RINGBUF_BUSY_BIT
        self.machine.write(hdr, _U32.pack(length | (BPF_RINGBUF_DISCARD_BIT if discard else 0)))

    def submit(self, sample: int) -> None:
        self._commit(sample, False)

    def discard(self, sample: int) -> None:
        self._commit(sample, True)

    def output(self, data: bytes, flags: int) -> int:
        """bpf_ringbuf_output: 0, -EINVAL for unknown flags, -EAGAIN when there is no room."""
        if flags & ~(BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP):
            return -errno.EINVAL
        sample = self.reserve(len(data))
        if not sample:
            return -errno.EAGAIN
        self.machine.write(sample, data)
        self.submit(sample)
        return 0

    def records(self) -> list[bytes]:
        """The committed records in order, as a consumer (ring_buffer__consume) reads them: it stops
        at a record still BUSY and skips discarded ones."""
        out, pos = [], self.consumer_pos
        while pos < self.producer_pos:
            hdr = self.data + (pos & self.mask)
            (length,) = _U32.unpack(self.machine.read(hdr, 4))
            if length & BPF_RINGBUF_BUSY_BIT:
                break
            size = length & ~BPF_RINGBUF_DISCARD_BIT
            if not length & BPF_RINGBUF_DISCARD_BIT:
                out.append(self.machine.read(hdr + BPF_RINGBUF_HDR_SZ, size))
            pos += _round8(size + BPF_RINGBUF_HDR_SZ)
        return out

    # ringbuf_map_lookup_elem and the others: -ENOTSUPP (524), a kernel-internal errno
    def lookup(self, key: bytes) -> int:
        return 0

    def update(self, key: bytes, value: bytes, flags: int) -> int:
        return -524

    def delete(self, key: bytes) -> int:
        return -524

    def items(self) -> list[tuple[bytes, bytes]]:
        return []


MAP_CLASSES: dict[int, type[Map]] = {
    BPF_MAP_TYPE_ARRAY: ArrayMap,
    BPF_MAP_TYPE_HASH: HashMap,
    BPF_MAP_TYPE_PERCPU_ARRAY: PercpuArrayMap,
    BPF_MAP_TYPE_STACK_TRACE: StackTraceMap,
    BPF_MAP_TYPE_RINGBUF: RingBufMap,
}


def create(machine: Machine, spec: MapSpec, btf: Btf | None = None) -> Map:
    """bpf_map_create: the map in guest memory, or a BpfError for a type the lab does not have."""
    cls = MAP_CLASSES.get(spec.type)
    if cls is None:
        raise BpfError(
            f"map '{spec.name}': map type {spec.type} is not supported "
            f"(the lab has {', '.join(MAP_TYPE_NAMES.values())})"
        )
    return cls(machine, spec, btf)
