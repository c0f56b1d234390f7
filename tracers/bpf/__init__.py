"""eBPF: programs as clang -target bpf builds them, run by the lab's interpreter of the BPF ISA (RFC 9669)."""
