"""Patch sites: found, initialised, enabled and disabled as the kernel does, byte for byte."""

import struct

import pytest

from emulator.asm import disassemble
from fixtures import catalog
from helpers import all_variants
from tracers import FtraceOps, Lab
from tracers.kernel_version import KernelVersion

NOP5 = bytes.fromhex("0f1f440000")
A64_NOP, MOV_X9_LR = struct.pack("<I", 0xD503201F), struct.pack("<I", 0xAA1E03E9)

# Where rec->ip sits relative to the function symbol, per variant (fixtures/README.md).
SITE_OFFSET = {("x86_64", "funcs-endbr"): 4, ("arm64", "funcs-bti"): 8}


# legacy mcount sites sit after each function's own prologue: tests/test_mcount.py
@pytest.mark.parametrize("arch_name,variant", all_variants(without=("mcount",)))
def test_every_function_has_one_site_at_the_kernel_ip(arch_name, variant):
    lab = Lab.open(variant, arch_name)
    assert sorted(s.func.name for s in lab.sites) == sorted(catalog.FUNCTIONS)
    default = 0 if arch_name == "x86_64" else 4  # arm64: the second NOP becomes the BL
    for s in lab.sites:
        assert s.ip - s.func.addr == SITE_OFFSET.get((arch_name, variant), default)


@pytest.mark.parametrize("arch_name,variant", all_variants(without=("mcount",)))
def test_site_bytes_compiled_init_enabled(arch_name, variant):
    lab = Lab.open(variant, arch_name)
    m, callers = lab.machine, lab.ftrace.callers[lab.karch.sites.name]
    fentry = m.symbols.get("__fentry__").addr
    for s in lab.sites:
        # a CALL_OPS site (arm64 -fpatchable-function-entry=4,2) calls that build of ftrace_caller
        caller = m.symbols.get("ftrace_caller_ops" if s.literal is not None else "ftrace_caller").addr
        assert caller == callers.for_site(s.literal)
        if arch_name == "x86_64":
            assert s.compiled in (NOP5, b"\xe8" + struct.pack("<i", fentry - s.ip - 5))
            assert s.disabled == NOP5
            assert disassemble(m.arch, s.enabled, s.ip)[0][2] == f"call {caller:#x}"
        else:
            assert s.compiled == A64_NOP * 2
            assert s.disabled == MOV_X9_LR + A64_NOP
            assert [t for _, _, t in disassemble(m.arch, s.enabled, s.addr)] == ["mov x9, x30", f"bl #{caller:#x}"]
        assert m.read(s.addr, len(s.disabled)) == s.disabled  # init wrote the NOP form


def test_call_ops_literal_is_found():
    """CALL_OPS (-fpatchable-function-entry=4,2) exists only on arm64."""
    lab = Lab.open("funcs-ops", "arm64")
    nop_ops = lab.ftrace.nop_ops
    for s in lab.sites:
        assert s.literal == s.func.addr - 8 and s.literal % 8 == 0
        assert lab.machine.u64(s.literal) == nop_ops  # ftrace_init_nop: ftrace_rec_set_nop_ops


def test_call_ops_before_6_3_leaves_the_literal_and_calls_ftrace_caller():
    """Before DYNAMIC_FTRACE_WITH_CALL_OPS (6.3) the sites of a =4,2 build call the one
    ftrace_caller, which passes function_trace_op; nothing reads or writes their literals."""
    lab = Lab.open("funcs-ops", "arm64", kernel=KernelVersion(6, 2))
    lab.ftrace.register(FtraceOps(lambda *a: None, name="all"))
    caller = lab.machine.symbols.get("ftrace_caller").addr
    for s in lab.sites:
        assert s.target == caller
        assert lab.machine.read(s.literal, 8) == A64_NOP * 2
    assert lab.call("fib", 10) == 55


def test_enable_then_disable_restores_text_byte_for_byte(arch):
    lab = Lab.open("funcs", arch)
    m = lab.machine
    text_addr, text_size = lab.obj.sections[".text"][0]
    after_init = m.read(text_addr, text_size)
    ops = FtraceOps(lambda *a: None, name="all")
    lab.ftrace.register(ops)
    enabled = m.read(text_addr, text_size)
    assert enabled != after_init and all(s.on for s in lab.sites)
    lab.ftrace.unregister(ops)
    assert m.read(text_addr, text_size) == after_init


def test_only_filtered_sites_are_patched(arch):
    lab = Lab.open("funcs", arch)
    ops = FtraceOps(lambda *a: None)
    lab.ftrace.set_filter(ops, "chain_*")
    lab.ftrace.register(ops)
    assert sorted(s.func.name for s in lab.sites if s.on) == ["chain_a", "chain_b", "chain_c"]
    for s in lab.sites:
        assert lab.machine.read(s.addr, len(s.enabled)) == (s.enabled if s.on else s.disabled)


def test_patch_refuses_unexpected_bytes(arch):
    lab = Lab.open("funcs", arch)
    site = lab.ftrace.site("fib")
    lab.machine.write_code(site.ip, lab.karch.sites.nop[:1] + b"\x00" * (lab.karch.sites.size - 1))
    with pytest.raises(Exception, match=r"refusing to patch fib"):
        lab.ftrace.register(FtraceOps(lambda *a: None))


def test_clang_sites_come_from_relocations_or_every_table():
    assert len(Lab.open("funcs-clang", "x86_64").sites) == 12  # no __mcount_loc: __fentry__ relocations
    lab = Lab.open("funcs-clang", "arm64")  # one table section per function
    assert len(lab.obj.sections["__patchable_function_entries"]) == 12 == len(lab.sites)
