"""BTF, the BPF Type Format of an object's `.BTF` section: a header, a type section and a string
section (include/uapi/linux/btf.h, Documentation/bpf/btf.rst). Parsed whole, every BTF_KIND_*,
for the maps' definitions (the `.maps` variables' struct types) and for decoding keys and values
in map dumps. Line information (`.BTF.ext`) is not read."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .isa import BpfError

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off/len, str_off/len
_TYPE = struct.Struct("<III")  # name_off, info, size or type

# BTF_KIND_* in include/uapi/linux/btf.h, by number.
KINDS = (
    "UNKN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE",
    "CONST", "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG",
    "ENUM64",
)  # fmt: skip
# Kinds whose third word is a type id (the others: a size, or unused).
_REFERS = {"PTR", "TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "FUNC", "FUNC_PROTO", "VAR",
           "DECL_TAG", "TYPE_TAG"}  # fmt: skip
MODIFIERS = {"TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "TYPE_TAG"}

# struct btf_type's int word (BTF_INT_ENCODING): flags
BTF_INT_SIGNED, BTF_INT_CHAR, BTF_INT_BOOL = 1, 2, 4
POINTER_SIZE = 8  # the BPF target's


@dataclass(frozen=True)
class Member:
    """A struct/union member (bit offset and, with kind_flag, a bitfield size), an enum value
    (`offset` holds the value), a function parameter, or a DATASEC's variable (`offset`, `size`)."""

    name: str
    type: int
    offset: int = 0
    size: int = 0


@dataclass(frozen=True)
class BtfType:
    id: int
    kind: str
    name: str
    size: int = 0  # INT, STRUCT, UNION, ENUM, ENUM64, DATASEC, FLOAT: bytes
    type: int = 0  # the referred type (PTR, TYPEDEF, modifiers, VAR, FUNC, FUNC_PROTO's return)
    kflag: bool = False
    encoding: int = 0  # INT: BTF_INT_SIGNED/CHAR/BOOL
    bit_offset: int = 0  # INT: BTF_INT_OFFSET
    bits: int = 0  # INT: BTF_INT_BITS
    nelems: int = 0  # ARRAY (type: the element type)
    linkage: int = 0  # VAR, FUNC
    members: tuple[Member, ...] = ()


class Btf:
    """The types of one object, by id (0 is void)."""

    def __init__(self, types: list[BtfType]):
        self.types = types

    def __getitem__(self, type_id: int) -> BtfType:
        return self.types[type_id]

    def skip_modifiers(self, type_id: int) -> BtfType:
        """The type under typedefs and qualifiers (btf__resolve_type)."""
        t = self.types[type_id]
        while t.kind in MODIFIERS:
            t = self.types[t.type]
        return t

    def size_of(self, type_id: int) -> int:
        """btf__resolve_size: the size in bytes of a type (a VAR's: its type's)."""
        t = self.types[type_id]
        nelems = 1
        while t.kind in MODIFIERS or t.kind in ("VAR", "ARRAY"):
            if t.kind == "ARRAY":
                nelems *= t.nelems
            t = self.types[t.type]
        if t.kind == "PTR":
            return nelems * POINTER_SIZE
        if t.kind in ("INT", "STRUCT", "UNION", "ENUM", "ENUM64", "DATASEC", "FLOAT"):
            return nelems * t.size
        raise BpfError(f"BTF type [{type_id}] {t.kind} '{t.name}' has no size")

    def by_name(self, name: str, kind: str) -> BtfType | None:
        return next((t for t in self.types if t.name == name and t.kind == kind), None)


def parse(data: bytes, where: str) -> Btf:
    """The `.BTF` section's bytes; `where` names the object in errors."""
    if len(data) < _HEADER.size:
        raise BpfError(f"{where}: .BTF: {len(data)} bytes, shorter than its header")
    magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
    if magic != BTF_MAGIC or version != 1:
        raise BpfError(f"{where}: .BTF: bad magic {magic:#x} or version {version}")
    types_at, strings_at = hdr_len + type_off, hdr_len + str_off
    if hdr_len < _HEADER.size or types_at + type_len > len(data) or strings_at + str_len > len(data):
        raise BpfError(f"{where}: .BTF: type or string section past the end of its {len(data)} bytes")
    strings = data[strings_at : strings_at + str_len]

    def name(off: int, type_id: int, at: int) -> str:
        end = strings.find(b"\0", off)
        if end < 0:
            raise BpfError(f"{where}: .BTF: type [{type_id}] at offset {at:#x}: name offset {off:#x} is not a string")
        return strings[off:end].decode("utf-8", "replace")

    types = [BtfType(0, "UNKN", "void")]
    pos, end = types_at, types_at + type_len
    while pos < end:
        type_id, at = len(types), pos - types_at
        if pos + _TYPE.size > end:
            raise BpfError(f"{where}: .BTF: type [{type_id}] at offset {at:#x}: truncated")
        name_off, info, size_type = _TYPE.unpack_from(data, pos)
        kind_no, vlen, kflag = info >> 24 & 0x1F, info & 0xFFFF, bool(info >> 31)
        if kind_no >= len(KINDS) or kind_no == 0:
            raise BpfError(f"{where}: .BTF: type [{type_id}] at offset {at:#x}: unknown kind {kind_no}")
        kind = KINDS[kind_no]
        pos += _TYPE.size
        extra = _extra_words(kind, vlen)
        if pos + 4 * extra > end:
            raise BpfError(f"{where}: .BTF: type [{type_id}] {kind} at offset {at:#x}: truncated")
        words = struct.unpack_from(f"<{extra}I", data, pos)
        pos += 4 * extra
        fields: dict = {"kflag": kflag}
        if kind in _REFERS:
            fields["type"] = size_type
        else:
            fields["size"] = size_type
        if kind == "INT":
            fields.update(encoding=words[0] >> 24 & 0xF, bit_offset=words[0] >> 16 & 0xFF, bits=words[0] & 0xFF)
        elif kind == "ARRAY":
            fields.update(type=words[0], nelems=words[2])
        elif kind in ("VAR", "FUNC"):
            fields["linkage"] = words[0] if kind == "VAR" else vlen
        elif kind in ("STRUCT", "UNION"):
            fields["members"] = tuple(
                Member(name(words[i], type_id, at), words[i + 1], *_member_offset(words[i + 2], kflag))
                for i in range(0, 3 * vlen, 3)
            )
        elif kind == "ENUM":
            signed = struct.unpack(f"<{vlen * 2}i", struct.pack(f"<{vlen * 2}I", *words))
            fields["members"] = tuple(
                Member(name(words[i], type_id, at), 0, signed[i + 1]) for i in range(0, 2 * vlen, 2)
            )
        elif kind == "ENUM64":
            fields["members"] = tuple(
                Member(name(words[i], type_id, at), 0, words[i + 1] | words[i + 2] << 32) for i in range(0, 3 * vlen, 3)
            )
        elif kind == "FUNC_PROTO":
            fields["members"] = tuple(Member(name(words[i], type_id, at), words[i + 1]) for i in range(0, 2 * vlen, 2))
        elif kind == "DATASEC":
            fields["members"] = tuple(Member("", words[i], words[i + 1], words[i + 2]) for i in range(0, 3 * vlen, 3))
        types.append(BtfType(type_id, kind, name(name_off, type_id, at), **fields))
    for t in types:
        refs = [t.type] + [m.type for m in t.members]
        bad = next((r for r in refs if r >= len(types)), None)
        if bad is not None:
            raise BpfError(
                f"{where}: .BTF: type [{t.id}] {t.kind} '{t.name}' refers to type [{bad}] of {len(types) - 1}"
            )
    return Btf(types)


def _extra_words(kind: str, vlen: int) -> int:
    """The 32-bit words that follow struct btf_type for this kind."""
    per_entry = {"STRUCT": 3, "UNION": 3, "ENUM": 2, "ENUM64": 3, "FUNC_PROTO": 2, "DATASEC": 3}
    fixed = {"INT": 1, "ARRAY": 3, "VAR": 1, "DECL_TAG": 1}
    return per_entry.get(kind, 0) * vlen + fixed.get(kind, 0)


def _member_offset(offset: int, kflag: bool) -> tuple[int, int]:
    """(bit offset, bitfield size): with kind_flag the word packs both (BTF_MEMBER_BIT_OFFSET)."""
    return (offset & 0xFFFFFF, offset >> 24) if kflag else (offset, 0)
