# examples/test_user_regression.py: regression tests on patched binaries, run by pytest with ftlab installed
from tracers import FtraceOps


def test_function_graph_of_fib(ftlab, ftlab_arch):  # one test per arch
    """The function_graph trace of fib(4) with its return values: the one kept in goldens/."""
    text = ftlab.trace("funcs", "fib(4)", arch=ftlab_arch, tracer="function_graph", funcgraph_retval=True)
    ftlab.assert_golden(text)  # goldens/test_function_graph_of_fib-x86_64.txt, then -arm64.txt


def test_kretprobe_sees_the_argument_and_return_value(ftlab, ftlab_arch):
    """A kretprobe event (r:) fetching the argument and $retval; snapshots checked against the true
    registers (--verify)."""
    spec = "r:fibret fib n=$arg1:s64 ret=$retval:s64"
    text = ftlab.trace("funcs", "fib(3)", arch=ftlab_arch, event=[spec], verify=True)
    ftlab.assert_golden(text, f"kretprobe-fib-{ftlab_arch}")


def test_every_fib_call_reaches_the_ftrace_ops(ftlab, ftlab_arch):
    """The Python API on a lab: an ftrace_ops sees fib(10)'s 2*fib(11)-1 calls, each with its n."""
    lab = ftlab.lab("funcs", ftlab_arch)  # or the path of your own .o or .ko
    seen = []
    ops = FtraceOps(lambda ip, parent_ip, op, fregs: seen.append(fregs.get_argument(0)))
    lab.ftrace.set_filter(ops, "fib")
    lab.ftrace.register(ops)
    assert lab.call("fib", 10) == 55
    lab.ftrace.unregister(ops)
    assert len(seen) == 2 * 89 - 1 and seen[0] == 10
