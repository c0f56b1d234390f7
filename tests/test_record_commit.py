"""A record is visible only once committed: rb_reserve clears its type and the writer stores the
type last, as the kernel's ring buffer shows no reader an event reserved but not committed. A run
the budget stops in the middle of writing a record must not print it half written."""

import json

import pytest

from tracers.cli.main import main


@pytest.mark.parametrize("tracer", ["function", "function_graph"])
def test_a_run_stopped_at_any_instruction_prints_only_whole_records(capsys, arch, tracer):
    seen = set()
    for budget in range(400, 1400, 3):  # stops inside the tracers' guest code, in every place
        argv = ["trace", "--arch", arch, "--budget", str(budget), "funcs", "fib(6)", "--tracer", tracer]
        assert main([*argv, "--format", "json"]) == 1
        out = capsys.readouterr().out.splitlines()
        records = [json.loads(line) for line in out]
        assert records[-1]["type"] == "stopped"
        for ev in records[:-2]:  # the events, then the summary and why it stopped
            assert ev["func"] == "fib" and ev["parent"].split("+")[0] in ("fib", "ftlab_caller"), ev
            assert ev["ts"] >= 1 and ev["regs"]["fields"], ev
        seen.add(len(records))
    assert len(seen) > 10  # the budgets stopped the run after many different numbers of events
