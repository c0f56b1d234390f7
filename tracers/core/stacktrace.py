"""Stack traces by frame records, undoing the return hooks as the kernel's unwinders do.

Both arches keep a frame record {previous fp, return address} at the frame pointer (x86_64 with
-fno-omit-frame-pointer: push rbp; mov rbp, rsp; arm64: stp x29, x30; mov x29, sp). A return
address that is a hook trampoline is replaced by the real one (ftrace_graph_ret_addr and
friends), found by the word the hook recorded: x86 the address of the return slot, arm64 the
caller's frame pointer.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_DEPTH = 64


def stack_trace(machine, karch, pc: int, fp: int, recover: list[Callable[[int, int], int]] = ()) -> list[int]:
    """Return addresses from pc outwards. `recover` maps (address, retp) to the real return
    address for each hook in place (fgraph's ret_addr, rethook's find_ret_addr)."""
    trace = [pc]
    stack = machine.region(machine.STACK[0])
    while fp and len(trace) < MAX_DEPTH and stack.base <= fp < stack.end - 16:
        prev_fp, ret = machine.u64(fp), machine.u64(fp + 8)
        retp = fp + 8 if karch.fgraph.retp == "sp" else prev_fp
        for fix in recover:
            ret = fix(ret, retp)
        if ret == machine.exit_addr or prev_fp <= fp:
            trace.append(ret)
            break
        trace.append(ret)
        fp = prev_fp
    return trace
