"""`bpftool map dump` of a map, byte for byte (libbpf/bpftool@0ffb986, src/map.c, btf_dumper.c,
json_writer.c): with BTF, plain text is json_writer's pretty output of btf_dumper with
is_plain_text; `-j` is an array of {"key", "value" (hex bytes), "formatted"}. The lab has one CPU,
so per-CPU maps show CPU 0. A map without a BTF value type (declared with key_size/value_size)
gets print_entry_plain's hex lines, inside the BTF writer's brackets, as bpftool prints them."""

from __future__ import annotations

import json

from .btf import BTF_INT_BOOL, BTF_INT_CHAR, BTF_INT_SIGNED, Btf, BtfType
from .maps import BPF_MAP_TYPE_PERCPU_ARRAY, Map

POSSIBLE_CPUS = 1
_MODIFIERS_AND_VAR = {"TYPEDEF", "VOLATILE", "CONST", "RESTRICT", "TYPE_TAG", "VAR"}


class JsonWriter:
    """bpftool's json_writer.c: a separator only between items, a newline and indent before a
    property name and before a closing bracket of a non-empty collection, none before values."""

    def __init__(self, pretty: bool):
        self.pretty = pretty
        self.out: list[str] = []
        self.depth = 0
        self.sep = ""

    def _eor(self) -> None:
        self.out.append(self.sep)
        self.sep = ","

    def _eol(self) -> None:
        if self.pretty:
            self.out.append("\n" + "    " * self.depth)

    def _begin(self, c: str) -> None:
        self._eor()
        self.out.append(c)
        self.depth += 1
        self.sep = ""

    def _end(self, c: str) -> None:
        self.depth -= 1
        if self.sep:
            self._eol()
        self.out.append(c)
        self.sep = ","

    def start_object(self) -> None:
        self._begin("{")

    def end_object(self) -> None:
        self._end("}")

    def start_array(self) -> None:
        self._begin("[")

    def end_array(self) -> None:
        self._end("]")

    def name(self, name: str) -> None:
        self._eor()
        self._eol()
        self.sep = ""
        self.out.append(_quote(name) + (": " if self.pretty else ":"))

    def printf(self, text: str) -> None:
        self._eor()
        self.out.append(text)

    def string(self, text: str) -> None:
        self.printf(_quote(text))

    def raw(self, text: str) -> None:
        """Text printed to stdout around the writer (print_entry_plain)."""
        self.out.append(text)

    def text(self) -> str:
        return "".join(self.out)


def _quote(s: str) -> str:
    """jsonw_puts: C escapes only, other bytes as they are."""
    escapes = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f", "\b": "\\b", "\\": "\\\\", '"': '\\"'}
    return '"' + "".join(escapes.get(c, c) for c in s) + '"'


class BtfDumper:
    """btf_dumper.c's btf_dumper_type: a value of a BTF type into the writer."""

    def __init__(self, btf: Btf, jw: JsonWriter, plain_text: bool):
        self.btf = btf
        self.jw = jw
        self.plain = plain_text

    def dump(self, type_id: int, data: bytes, bit_offset: int = 0) -> bool:
        """False where btf_dumper_do_type returns an error (the element's dump stops)."""
        t = self.btf[type_id]
        kind = t.kind
        if kind == "INT":
            return self._int(t, bit_offset, data)
        if kind in ("STRUCT", "UNION"):
            return self._struct(t, data)
        if kind == "ARRAY":
            return self._array(t, data)
        if kind in ("ENUM", "ENUM64"):
            return self._enum(t, data)
        if kind == "PTR":
            value = int.from_bytes(data[:8], "little")
            if self.plain:  # "%p": glibc prints a null pointer as (nil)
                self.jw.printf(f'"{value:#x}"' if value else '"(nil)"')
            else:
                self.jw.printf(str(value))
            return True
        if kind == "UNKN":
            self.jw.printf("(unknown)")
            return True
        if kind == "FWD":
            self.jw.printf("(fwd-kind-invalid)")
            return False
        if kind in ("TYPEDEF", "VOLATILE", "CONST", "RESTRICT"):
            resolved = t  # btf__resolve_type: through modifiers, typedefs and variables
            while resolved.kind in _MODIFIERS_AND_VAR:
                resolved = self.btf[resolved.type]
            return self.dump(resolved.id, data, bit_offset)
        if kind == "VAR":
            self.jw.start_object()
            self.jw.name(t.name)
            ok = self.dump(t.type, data, bit_offset)
            self.jw.end_object()
            return ok
        if kind == "DATASEC":
            self.jw.start_object()
            self.jw.name(t.name)
            self.jw.start_array()
            ok = all(self.dump(v.type, data[v.offset :]) for v in t.members)
            self.jw.end_array()
            self.jw.end_object()
            return ok
        self.jw.printf("(unsupported-kind)")
        return False

    def _int(self, t: BtfType, bit_offset: int, data: bytes) -> bool:
        bits = t.bits
        if bit_offset or t.bit_offset or bits % 8:
            total = bit_offset + t.bit_offset
            self._bitfield(bits, total % 8, data[total // 8 :])
            return True
        if bits == 128:
            self._int128(int.from_bytes(data[:16], "little"))
            return True
        enc = t.encoding
        if enc in (0, BTF_INT_SIGNED):
            if bits not in (8, 16, 32, 64):
                self._bitfield(bits, 0, data)
                return True
            self.jw.printf(str(int.from_bytes(data[: bits // 8], "little", signed=enc == BTF_INT_SIGNED)))
        elif enc == BTF_INT_CHAR:
            c = data[0]
            if 0x20 <= c < 0x7F:  # isprint
                self.jw.printf(f'"{chr(c)}"')
            else:
                self.jw.printf(f"{c:#x}" if self.plain else f'"\\u00{c:02x}"')
        elif enc == BTF_INT_BOOL:
            self.jw.printf("true" if data[0] else "false")
        else:
            return False
        return True

    def _bitfield(self, nr_bits: int, bit_offset: int, data: bytes) -> None:
        """btf_dumper_bitfield: the nr_bits at bit_offset, little-endian, printed as hex."""
        nbytes = -(-(bit_offset + nr_bits) // 8)
        value = int.from_bytes(data[:nbytes], "little") >> bit_offset & ((1 << nr_bits) - 1)
        self._int128(value)

    def _int128(self, value: int) -> None:
        text = f"{value:#x}"  # "0x%llx%016llx" of the two halves is the same digits
        self.jw.printf(text if self.plain else f'"{text}"')

    def _struct(self, t: BtfType, data: bytes) -> bool:
        self.jw.start_object()
        ok = True
        for m in t.members:
            self.jw.name(m.name)
            at = data[m.offset // 8 :]
            if m.size:  # a kind_flag bitfield
                self._bitfield(m.size, m.offset % 8, at)
            elif not self.dump(m.type, at, m.offset % 8):
                ok = False
                break
        self.jw.end_object()
        return ok

    def _array(self, t: BtfType, data: bytes) -> bool:
        if self._is_str_array(t, data):
            self.jw.string(data[: data.index(0)].decode("ascii"))
            return True
        size = self.btf.size_of(t.type)
        self.jw.start_array()
        ok = all(self.dump(t.type, data[i * size :]) for i in range(t.nelems))
        self.jw.end_array()
        return ok

    def _is_str_array(self, t: BtfType, data: bytes) -> bool:
        """is_str_array: chars (not through a typedef) with a NUL and only printable bytes before it."""
        if not t.nelems:
            return False
        elem = self.btf[t.type]
        while elem.kind in ("VOLATILE", "CONST", "RESTRICT", "TYPE_TAG"):
            elem = self.btf[elem.type]
        if elem.kind != "INT" or elem.size != 1 or (elem.encoding != BTF_INT_CHAR and elem.name != "char"):
            return False
        for c in data[: t.nelems]:
            if c == 0:
                return True
            if c <= 0x1F or c >= 0x7F:
                return False
        return False

    def _enum(self, t: BtfType, data: bytes) -> bool:
        if t.kind == "ENUM64":
            value = int.from_bytes(data[:8], "little")
        elif t.size in (1, 2, 4, 8):
            value = int.from_bytes(data[: t.size], "little", signed=True)
        else:
            return False
        match = next((m.name for m in t.members if m.offset == value), None)
        if match is not None:
            self.jw.string(match)
        else:  # jsonw_int: PRId64
            self.jw.printf(str(value if value < 1 << 63 else value - (1 << 64)))
        return True


def _dumper(m: Map, jw: JsonWriter, plain_text: bool) -> BtfDumper | None:
    """get_map_kv_btf: the map's BTF when it has a value type (btf_value_type_id), else None."""
    return BtfDumper(m.btf, jw, plain_text) if m.btf is not None and m.spec.value_type_id else None


def _dump_btf(d: BtfDumper, m: Map, key: bytes, value: bytes) -> None:
    """do_dump_btf: one element as {"key", "value"} or, per-CPU, {"key", "values": [{"cpu", "value"}]}."""
    spec = m.spec
    d.jw.start_object()
    if spec.key_type_id:
        d.jw.name("key")
        if not d.dump(spec.key_type_id, key):
            d.jw.end_object()
            return
    if spec.type != BPF_MAP_TYPE_PERCPU_ARRAY:
        d.jw.name("value")
        d.dump(spec.value_type_id, value)
    else:
        d.jw.name("values")
        d.jw.start_array()
        for cpu in range(POSSIBLE_CPUS):
            d.jw.start_object()
            d.jw.name("cpu")
            d.jw.printf(str(cpu))
            d.jw.name("value")
            ok = d.dump(spec.value_type_id, value)
            d.jw.end_object()
            if not ok:
                break
        d.jw.end_array()
    d.jw.end_object()


def _hex(data: bytes, sep: str = " ") -> str:
    """fprint_hex: bytes as %02hhx, a newline every 16, two spaces every 8."""
    out = []
    for i, b in enumerate(data):
        pfx = "" if not i else "\n" if not i % 16 else "  " if not i % 8 else sep
        out.append(f"{pfx}{b:02x}")
    return "".join(out)


def _entry_plain(m: Map, key: bytes, value: bytes) -> str:
    """print_entry_plain: the hex form, for a map without BTF types."""
    ks, vs = m.spec.key_size, m.spec.value_size
    if m.spec.type == BPF_MAP_TYPE_PERCPU_ARRAY:
        text = f"key:\n{_hex(key)}\n" if ks else ""
        for cpu in range(POSSIBLE_CPUS):
            text += f"value (CPU {cpu:02d}):{chr(10) if vs > 16 else ' '}{_hex(value)}\n" if vs else ""
        return text
    break_names = ks > 16 or vs > 16
    single_line = ks + vs <= 24 and not break_names
    brk = "\n" if break_names else " "
    text = f"key:{brk}{_hex(key)}{'  ' if single_line else chr(10)}" if ks else ""
    text += f"value:{brk}{_hex(value)}" if vs else ""
    return text + "\n"


def dump_text(m: Map) -> str:
    """`bpftool map dump` of the map: what it prints to stdout."""
    jw = JsonWriter(pretty=True)
    d = _dumper(m, jw, plain_text=True)
    jw.start_array()
    for key, value in m.items():
        if d is not None:
            _dump_btf(d, m, key, value)
        else:
            jw.raw(_entry_plain(m, key, value))
    jw.end_array()
    return jw.text() + "\n"


def dump_json(m: Map) -> list[dict]:
    """`bpftool -j map dump`, parsed: per element "key" and "value" (or per-CPU "values") as hex
    byte strings, and with BTF "formatted": the element decoded by its types."""
    jw = JsonWriter(pretty=False)
    d = _dumper(m, jw, plain_text=False)
    jw.start_array()
    for key, value in m.items():
        jw.start_object()
        jw.name("key")
        _hex_json(jw, key)
        if m.spec.type != BPF_MAP_TYPE_PERCPU_ARRAY:
            jw.name("value")
            _hex_json(jw, value)
        else:
            jw.name("values")
            jw.start_array()
            for cpu in range(POSSIBLE_CPUS):
                jw.start_object()
                jw.name("cpu")
                jw.printf(str(cpu))
                jw.name("value")
                _hex_json(jw, value)
                jw.end_object()
            jw.end_array()
        if d is not None:
            jw.name("formatted")
            _dump_btf(d, m, key, value)
        jw.end_object()
    jw.end_array()
    return json.loads(jw.text())


def _hex_json(jw: JsonWriter, data: bytes) -> None:
    """print_hex_data_json"""
    jw.start_array()
    for b in data:
        jw.printf(f'"0x{b:02x}"')
    jw.end_array()


def formatted(m: Map) -> list[dict]:
    """Each element decoded by its BTF types, as `bpftool -j map dump` gives it under "formatted"
    ({"key": K, "value": V}; a global data map has no key)."""
    return [e["formatted"] for e in dump_json(m) if "formatted" in e]
