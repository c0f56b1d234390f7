"""The bench's own logic (its figures are measured by `make bench`, never asserted here)."""

from tracers.cli import bench


def test_verdicts_compare_with_each_arch_target():
    assert bench._verdict("function_events_per_s", "arm64", 999_999).endswith("MISSED")
    assert bench._verdict("function_events_per_s", "x86_64", 500_000).endswith("ok")
    assert bench._verdict("peak_rss_mb_function_graph_fib27", "arm64", 301).endswith("MISSED")
    assert bench._verdict("buffer_loop_64k_s", "arm64", 1.0) == ""


def test_naive_tracer_sees_every_call(lab):
    events, _ = bench.naive_trace(lab, 10)
    fib = lab.machine.address_of("fib")
    assert len(events) == 177 and all(addr == fib for addr, *_ in events)
    assert events[0][3][0] == 10 and events[0][1] == lab.machine.exit_addr  # n, and the caller


def test_the_markdown_table_marks_each_missed_target():
    results = [
        {"arch": "arm64", "function_events_per_s": 999_999, "budget_vs_none": 0.8},
        {"arch": "x86_64", "function_events_per_s": 500_000},
    ]
    table = bench.markdown(results).splitlines()
    assert table[0] == "| measure | arm64 | x86_64 | target |"
    row = next(line for line in table if line.startswith("| function_events_per_s "))
    assert row == "| function_events_per_s | 999,999 — missed | 500,000 | ≥ 1,000,000 / ≥ 500,000 |"
    assert "| budget_vs_none | 0.8 |  | ≥ 0.75 |" in table
    assert len(table) == 2 + len(bench.TARGETS)


def test_the_machine_is_named():
    assert "cores, Python 3." in bench.machine()
