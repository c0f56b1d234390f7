"""The arch-neutral tracing mechanisms (the kernel's kernel/trace/ and kernel/kprobes.c): the
ftrace core, fgraph, rethook, kprobes, kretprobes, fprobe, the ring buffer, register snapshots."""
