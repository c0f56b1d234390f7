"""What unregistering must restore: the loaded objects' text byte for byte, and a task and cores as
a fresh lab has them (tests/test_task_state.py's fresh state)."""

from __future__ import annotations


def text_of(lab) -> dict[int, bytes]:
    """Every executable section of every loaded object: address -> bytes."""
    m = lab.machine
    return {addr: m.read(addr, size) for obj in (*lab.loaded, lab.obj) for addr, size in obj.text}


def text_changes(lab, after_init: dict[int, bytes]) -> list[tuple[int, bytes, bytes]]:
    """(address, bytes after init, bytes now) of the first changed instruction-sized run in each
    section that differs."""
    out = []
    for addr, was in after_init.items():
        now = lab.machine.read(addr, len(was))
        if now != was:
            first = next(i for i in range(len(was)) if now[i] != was[i])
            out.append((addr + first, was[first : first + 4], now[first : first + 4]))
    return out


def left_behind(lab) -> list[str]:
    """What a fresh lab does not have, each in a phrase (empty: clean)."""
    fg, out = lab.fgraph, []
    if (fg.curr_ret_stack, fg.curr_ret_depth) != (0, -1):
        out.append(f"fgraph shadow stack at offset {fg.curr_ret_stack}, depth {fg.curr_ret_depth}")
    if any(gops is not None for gops in fg.array):
        out.append("fgraph_ops still registered")
    if lab.rethook.task:
        out.append(f"{len(lab.rethook.task)} rethook instances not returned")
    if lab.kprobes.kprobe_running():  # a Python handler's, or the guest kprobe_ftrace_handler's
        out.append("a kprobe still running (kprobe_ctlblk not reset)")
    if lab.kprobes.points:
        out.append(f"{len(lab.kprobes.points)} kprobe points still armed")
    if lab.ftrace.ops:
        out.append(f"ftrace ops still registered: {', '.join(o.name for o in lab.ftrace.ops)}")
    if lab.ftrace.recursion.val:
        out.append(f"ftrace recursion bits {lab.ftrace.recursion.val:#x} still held")
    return out
