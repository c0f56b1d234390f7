"""The layouts guest code and Python share are declared once: each one's asm constants and Python
codec agree, fgraph's word helpers are the kernel's macros, the guest and Python push the same
shadow-stack words, and the tracers' guest code is bound to a lab once."""

import pytest

from emulator import Machine
from emulator import arch as arches
from emulator.layout import Bits, Layout
from tracers import FgraphOps, FunctionGraphTracer, Lab
from tracers.arch import kernel_arch
from tracers.arch.base import BPF_PROG, BPF_TRAMP_IMAGE, BPF_TRAMP_RUN_CTX
from tracers.core import fgraph
from tracers.core.ftrace import FTRACE_OPS, OPS_LIST_ARGS
from tracers.core.kprobes import TRAP_ARGS
from tracers.core.rethook import CALLBACK_ARGS
from tracers.core.ring_buffer import RB_CONTROL, RECORD_HEADER
from tracers.kernel_version import CHANGES, OLDEST
from tracers.output.records import records_of
from tracers.output.sinks import ListSink

RELEASES = sorted({OLDEST} | {first for first, _ in CHANGES.values()})  # every modelled behaviour


def shared_layouts(karch):
    """Every struct guest code and Python share, with the prefix of its asm constants: the records of
    each release (the exit record holds what that release's return_to_handler saved)."""
    fp_test = karch.fgraph.fp_test
    records = {records_of(karch, kernel) for kernel in RELEASES}
    return [
        (RB_CONTROL, "RB_"),
        (RECORD_HEADER, "HDR_"),
        *((r.function, "FN_") for r in records),
        *((r.graph_entry, "GRAPH_ENT_") for r in records),
        *((r.graph_exit, "GRAPH_RET_") for r in records),
        (fgraph.FG_CONTROL, "FG_"),
        (fgraph.FTRACE_RET_STACK[fp_test], "FG_FRAME_"),
        (fgraph.GUEST_PUSH[fp_test], "FG_PUSH_"),
        (OPS_LIST_ARGS, "OPS_LIST_ARGS_"),
        (fgraph.RETURN_ARGS, "RETURN_ARGS_"),
        (TRAP_ARGS, "TRAP_ARGS_"),
        (CALLBACK_ARGS, "CALLBACK_ARGS_"),
        (FTRACE_OPS, "FTRACE_OPS_"),
        (BPF_PROG, "BPF_PROG_"),
        (BPF_TRAMP_RUN_CTX, "BPF_TRAMP_RUN_CTX_"),
        (BPF_TRAMP_IMAGE, "BPF_TRAMP_IMAGE_"),
    ]


# A store of the value v to the named offset, per arch: the snippet's first argument points at the struct.
STORE = {"x86_64": "mov rax, {v}\nmov [rdi+{name}], rax", "arm64": "mov x9, #{v}\nstr x9, [x0, #{name}]"}


@pytest.mark.parametrize("arch_name", list(arches.ARCHES))
def test_guest_stores_at_each_named_offset_decode_by_name(arch_name, tmp_path):
    karch = kernel_arch(arches.get(arch_name))
    m = Machine(karch.cpu)
    for n, (layout, prefix) in enumerate(shared_layouts(karch)):
        names = list(layout.offsets)
        value = {name: 1000 * n + i + 1 for i, name in enumerate(names)}
        source = tmp_path / f"{prefix}store.S"
        stores = "\n".join(STORE[arch_name].format(v=value[name], name=f"{prefix}{name.upper()}") for name in names)
        source.write_text(f".globl store\nstore:\n{stores}\nret\n")
        addr = m.load_lab_code(source, layout.asm_constants(prefix))["store"]
        buf = bytearray(layout.size)
        m.call(addr, buf)
        words = layout.codec.unpack(buf)
        assert {name: words[layout.index(name)] for name in names} == value, layout.name
        assert [layout.getter(name)(words) for name in names] == list(value.values())
        assert layout.asm_constants(prefix)[f"{prefix}SIZE"] == 8 * len(names) == layout.size


def test_layouts_refuse_a_slot_or_field_twice():
    with pytest.raises(Exception, match="declared twice"):
        Layout.of("bad", ("a", "b", "a"))
    with pytest.raises(Exception, match="declared twice"):
        RECORD_HEADER.extend("bad", ("ts",))
    with pytest.raises(Exception, match="declared twice"):
        Bits("w", {"a": 3}).extend("bad", {"a": 1})
    with pytest.raises(Exception, match="do not fit"):
        Bits("bad", {"a": 60, "b": 5})


# kernel/trace/fgraph.c's macros and helpers (6.14, gregkh/linux 000aa47a5123), as written there
FGRAPH_FRAME_OFFSET_BITS = 10
FGRAPH_FRAME_OFFSET_MASK = (1 << FGRAPH_FRAME_OFFSET_BITS) - 1
FGRAPH_TYPE_BITS = 2
FGRAPH_TYPE_MASK = (1 << FGRAPH_TYPE_BITS) - 1
FGRAPH_TYPE_SHIFT = FGRAPH_FRAME_OFFSET_BITS
FGRAPH_TYPE_BITMAP, FGRAPH_TYPE_DATA = 1, 2
FGRAPH_INDEX_BITS = 16
FGRAPH_INDEX_MASK = (1 << FGRAPH_INDEX_BITS) - 1
FGRAPH_INDEX_SHIFT = FGRAPH_TYPE_SHIFT + FGRAPH_TYPE_BITS
FGRAPH_DATA_BITS = 5
FGRAPH_DATA_MASK = (1 << FGRAPH_DATA_BITS) - 1
FGRAPH_DATA_SHIFT = FGRAPH_TYPE_SHIFT + FGRAPH_TYPE_BITS
FGRAPH_DATA_INDEX_BITS = 4
FGRAPH_DATA_INDEX_MASK = (1 << FGRAPH_DATA_INDEX_BITS) - 1
FGRAPH_DATA_INDEX_SHIFT = FGRAPH_DATA_SHIFT + FGRAPH_DATA_BITS


def kernel_set_bitmap(bitmap, offset):  # set_bitmap's word, for a frame `offset` words down
    return (bitmap << FGRAPH_INDEX_SHIFT) | (FGRAPH_TYPE_BITMAP << FGRAPH_TYPE_SHIFT) | offset


def kernel_make_data_type_val(idx, size, offset):
    return (
        (idx << FGRAPH_DATA_INDEX_SHIFT)
        | ((size - 1) << FGRAPH_DATA_SHIFT)
        | (FGRAPH_TYPE_DATA << FGRAPH_TYPE_SHIFT)
        | offset
    )


def test_fgraph_words_are_the_kernels():
    for bitmap in (1, 0b1001, 1 << 15, FGRAPH_INDEX_MASK):
        for offset in (1, 4, 5, FGRAPH_FRAME_OFFSET_MASK):
            val = fgraph.make_bitmap_type_val(bitmap, offset)
            assert val == kernel_set_bitmap(bitmap, offset)
            assert fgraph.get_offset(val) == val & FGRAPH_FRAME_OFFSET_MASK == offset
            assert fgraph.get_type(val) == (val >> FGRAPH_TYPE_SHIFT) & FGRAPH_TYPE_MASK == FGRAPH_TYPE_BITMAP
            assert fgraph.get_bitmap_bits(val) == (val >> FGRAPH_INDEX_SHIFT) & FGRAPH_INDEX_MASK == bitmap
    for idx in range(16):
        for size in range(1, 33):  # FGRAPH_MAX_DATA_SIZE: 32 words
            for offset in (2, size + 4, FGRAPH_FRAME_OFFSET_MASK):
                val = fgraph.make_data_type_val(idx, size, offset)
                assert val == kernel_make_data_type_val(idx, size, offset)
                assert fgraph.get_offset(val) == offset and fgraph.get_type(val) == FGRAPH_TYPE_DATA
                assert fgraph.get_data_index(val) == (val >> FGRAPH_DATA_INDEX_SHIFT) & FGRAPH_DATA_INDEX_MASK == idx
                assert fgraph.get_data_size(val) == ((val >> FGRAPH_DATA_SHIFT) & FGRAPH_DATA_MASK) + 1 == size
    consts = fgraph.asm_constants(kernel_arch(arches.get("arm64")))
    assert (
        consts["FGRAPH_FRAME_OFFSET_MASK"],
        consts["FGRAPH_TYPE_SHIFT"],
        consts["FGRAPH_INDEX_SHIFT"],
        consts["FGRAPH_DATA_SHIFT"],
        consts["FGRAPH_DATA_MASK"],
        consts["FGRAPH_DATA_INDEX_SHIFT"],
    ) == (
        FGRAPH_FRAME_OFFSET_MASK,
        FGRAPH_TYPE_SHIFT,
        FGRAPH_INDEX_SHIFT,
        FGRAPH_DATA_SHIFT,
        FGRAPH_DATA_MASK,
        FGRAPH_DATA_INDEX_SHIFT,
    )


def _shadow_stack_in(lab, func: str, ring: bool) -> list[int]:
    """The shadow stack's words when `func` (as fib(4)'s deepest call) has just been entered."""
    site = lab.ftrace.site(func)
    seen = []
    fg = lab.fgraph

    def snapshot(_addr):
        if not seen or fg.curr_ret_stack > len(seen[-1]):
            seen.append([fg._word(i) for i in range(fg.curr_ret_stack)])

    lab.machine.hook_code(snapshot, site.ip + lab.karch.sites.size)
    with FunctionGraphTracer(lab, ListSink(), ring=ring):
        lab.call(func, 4)
    return seen[-1]


def test_the_guest_pushes_what_python_pushes(arch):
    """graph_trace_entry's frames, data headers and bitmap words equal fgraph.py's for the same
    calls; only the calltime (each path's clock) differs."""
    guest, python = (_shadow_stack_in(Lab.open("funcs", arch), "fib", ring) for ring in (True, False))
    assert len(guest) == len(python) > 0
    push = fgraph.GUEST_PUSH[kernel_arch(arches.get(arch)).fgraph.fp_test]
    calltimes = {i for i in range(len(guest)) if i % push.nr_words == push.index("data")}
    assert [w for i, w in enumerate(guest) if i not in calltimes] == [
        w for i, w in enumerate(python) if i not in calltimes
    ]


def test_tracers_on_one_lab_share_one_fgraph_bad_fp_hook(lab):
    """Bug (c): each ring-buffer function_graph tracer used to add a hook on fgraph_bad_fp."""
    hooks = lab.machine._call_hooks._alive
    before = len(hooks)
    for _ in range(5):
        with FunctionGraphTracer(lab, ListSink()):
            lab.call("fib", 3)
    assert len(hooks) == before
    lab.fgraph.register(FgraphOps(lambda t, g, f: 0, name="other"))  # not on the guest path: none either
    FunctionGraphTracer(lab, ListSink())
    assert len(hooks) == before
