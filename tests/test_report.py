"""`ftlab report`: the page parsed back (html.parser) and held against the lab's own answers, taken
again from a fresh lab: the sites, every mechanism's and BPF route's wrong and missing fields, the
costs the chart draws, the function graph `ftlab trace` prints. The page needs nothing outside
itself and is the same bytes every time; bad input is one line and leaves no file."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tracers import Lab
from tracers.call_syntax import parse_calls
from tracers.cli.bpf_routes import route_captures
from tracers.cli.main import main
from tracers.cli.mechanisms import capture_all
from tracers.cli.views import site_states
from tracers.views.report import BAR_W, SECTIONS, ArchView, page

CALL, AT = "chain_a(10)", "chain_c"


class Page(HTMLParser):
    """What a report page holds, as a reader of its markup finds it."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.highlighted: dict[tuple[str, str], dict[str, list[str]]] = {}  # (arch, mech) -> class -> fields
        # measure -> (arch, mech) -> (value, width); measure -> the numbers on the axis
        self.bars: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
        self.ticks: dict[str, list[float]] = {}
        self.pres: list[str] = []
        self.refused: list[str] = []
        self.site_cells: list[str] = []
        self.titles: list[tuple[str, str]] = []  # (h3 or h4, text): a mechanism's heading, each arch's
        self._table = self._row = self._measure = None
        self._cell: list[str] | None = None
        self._text: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self.sections.append(a["id"])
        elif tag == "table":
            self._table = (a["data-arch"], a["data-mechanism"]) if "data-mechanism" in a else a.get("class")
        elif tag == "tr" and isinstance(self._table, tuple):
            self._row = a.get("class")
        elif tag == "td" and (self._row or self._table == "sites"):
            self._cell = []
        elif tag == "svg" and "data-measure" in a:
            self._measure = a["data-measure"]
            self.bars[self._measure], self.ticks[self._measure] = {}, []
        elif tag == "rect" and "data-value" in a:
            key = (a["data-arch"], a["data-mechanism"])
            self.bars[self._measure][key] = (float(a["data-value"]), float(a["width"]))
        elif tag == "text" and a.get("class") == "tick":
            self._text = []
        elif tag in ("pre", "h2", "h3", "h4") or (tag == "p" and a.get("class") == "refused"):
            self._text = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            text = "".join(self._cell)
            if self._table == "sites":
                self.site_cells.append(text)
            elif self._row in ("wrong", "missing"):
                fields = self.highlighted.setdefault(self._table, {}).setdefault(self._row, [])
                fields.append(text)
                self._row = "done"  # the field is the first cell
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "text" and self._text is not None:
            self.ticks[self._measure].append(float("".join(self._text)))
            self._text = None
        elif tag in ("pre", "h2", "h3", "h4", "p") and self._text is not None:
            text = "".join(self._text)
            if tag in ("h3", "h4"):
                self.titles.append((tag, text))
            else:
                {"pre": self.pres, "h2": self.headings, "p": self.refused}[tag].append(text)
            self._text = None

    def handle_data(self, data):
        for sink in (self._cell, self._text):
            if sink is not None:
                sink.append(data)


def report(tmp_path, *args, name="report.html"):
    path = tmp_path / name
    assert main(["report", *args, "-o", str(path)]) == 0
    return path


@pytest.fixture
def truth(arch):
    """The lab's own answers, from a lab of its own."""
    lab = Lab.open("funcs", arch)
    calls = parse_calls(CALL)
    return lab, capture_all(lab, AT, calls) + route_captures(lab, AT, calls), site_states(lab, AT)


def test_every_section_and_nothing_from_outside(tmp_path, arch):
    text = report(tmp_path, "--arch", arch, "funcs", CALL, "--at", AT).read_text()
    got = Page(text)
    # the built-in sections, then the layouts and the step walk
    assert got.sections == [*(sid for sid, _ in SECTIONS), "extra-1", "extra-2"]
    assert (
        got.headings[: len(SECTIONS)] == [title for _, title in SECTIONS] and got.headings[len(SECTIONS)] == "Layouts"
    )
    assert not [t for t, _ in got.tags if t in ("script", "link", "img", "iframe", "object", "embed", "base")]
    for tag, attrs in got.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)  # no script in an event handler either
            if name in ("src", "href", "xlink:href", "action", "srcset"):
                assert value.startswith("#"), (tag, name, value)  # links within the page only
    assert not re.search(r"https?:|file:|url\(|@import", text)


def test_highlighted_fields_are_the_wrong_and_missing_ones(tmp_path, arch, truth):
    _, captures, _ = truth
    got = Page(report(tmp_path, "--arch", arch, "funcs", CALL, "--at", AT).read_text())
    want = {
        (arch, c.mechanism): {k: v for k, v in (("wrong", c.mismatch), ("missing", c.missing)) if v}
        for c in captures
        if not c.refused and (c.mismatch or c.missing)
    }
    assert got.highlighted == want
    # the page would show a highlight: partial_regs' mode member is partly made up, ftrace_regs has no flags
    assert any("wrong" in v for v in want.values()) and any("missing" in v for v in want.values())
    refused = [c for c in captures if c.refused]  # the kernel's reason, in place of a table
    assert got.refused == [f"at {c.at}: not on {arch}: {c.refused}" for c in refused]
    assert refused or arch == "x86_64"  # arm64: no ftrace_regs_caller, no BPF trampoline without CALL_OPS


def test_the_bars_are_the_costs(tmp_path, arch, truth):
    _, captures, _ = truth
    got = Page(report(tmp_path, "--arch", arch, "funcs", CALL, "--at", AT).read_text())
    for measure, cost in (("insns", lambda c: c.insns), ("stored", lambda c: c.stored)):
        want = {(arch, c.mechanism): cost(c) for c in captures if not c.refused}
        bars = got.bars[measure]
        assert {k: v for k, (v, _) in bars.items()} == pytest.approx(want, abs=0.005)
        assert all(v > 0 for v in want.values())
        ticks = got.ticks[measure]  # 0 to a round top, in quarters; the bars drawn to that scale
        top = ticks[-1]
        assert ticks == [top * i / 4 for i in range(5)] and max(want.values()) <= top < 2.5 * max(want.values())
        for value, width in bars.values():
            assert width == pytest.approx(value * BAR_W / top, abs=0.1)


def test_sites_and_the_function_graph_as_the_other_commands_show_them(tmp_path, capsys, arch, truth):
    _, _, sites = truth
    got = Page(report(tmp_path, "--arch", arch, "funcs", CALL, "--at", AT).read_text())
    assert got.site_cells == [text for _, text in sites]
    capsys.readouterr()
    assert main(["trace", "--arch", arch, "funcs", CALL, "--tracer", "function_graph"]) == 0
    assert got.pres == [capsys.readouterr().out]


def test_both_arches_side_by_side_the_same_bytes_every_time(tmp_path, capsys):
    first = report(tmp_path, "funcs", CALL, "--at", AT, name="a.html")
    out = capsys.readouterr().out
    second = report(tmp_path, "funcs", CALL, "--at", AT, name="b.html")
    assert first.read_bytes() == second.read_bytes()
    size = len(first.read_bytes())
    assert out == f"report: {first}: 2 arches, 6 mechanisms, 7 BPF routes, {size} bytes\n"
    got = Page(first.read_text())
    assert {arch for arch, _ in got.bars["insns"]} == {"x86_64", "arm64"} and len(got.pres) == 2
    assert len(got.site_cells) == 2 * 4  # compiled, init, enabled, kprobe armed; per arch
    shown, heading = [], ""  # (arch, the title the page gives its snapshot)
    for tag, text in got.titles[: -len(got.pres)]:  # the function graphs' are last
        if tag == "h3":
            heading = text
        else:
            arch, _, own = text.partition(": ")
            shown.append((arch, own or heading))
    calls = parse_calls(CALL)
    want = []
    for arch in ("x86_64", "arm64"):
        lab = Lab.open("funcs", arch)
        want += [(arch, c.title) for c in capture_all(lab, AT, calls) + route_captures(lab, AT, calls)]
    assert sorted(shown) == sorted(want)  # arm64's kretprobe is BRK #7's, x86's the rethook trampoline's


def test_default_at_is_the_first_calls_function(tmp_path, arch):
    text = report(tmp_path, "--arch", arch, "funcs", "fib(3)").read_text()
    assert "<title>ftlab report: fib in funcs.o</title>" in text


def test_extra_sections_follow_the_built_in_ones(lab):
    calls = parse_calls("fib(2)")
    view = ArchView(lab.arch, site_states(lab, "fib"), capture_all(lab, "fib", calls), "trace <&>\n")
    text = page("t", "s", [view], extra=[("Layouts <svg>", '<svg width="1" height="1"></svg>'), ("Step", "<p>x</p>")])
    got = Page(text)
    assert got.sections == [*(sid for sid, _ in SECTIONS), "extra-1", "extra-2"]
    assert got.headings[-2:] == ["Layouts <svg>", "Step"] and got.pres == ["trace <&>\n"]  # text escaped
    assert '<svg width="1" height="1"></svg>' in text and ('<a href="#extra-1">Layouts &lt;svg&gt;</a>') in text


@pytest.mark.parametrize(
    "args, error",
    [
        (["-o", "no/such/dir/r.html"], "no/such/dir/r.html: No such file or directory"),
        (["-o", "."], ".: Is a directory"),
        (["-o", "r.html", "--at", "nosuch"], "--at nosuch: no function 'nosuch' in funcs.o"),
        (
            ["-o", "r.html", "--at", "fib+0x8"],
            (
                "--at fib+0x8: the report is of a function's entry (SYM); "
                "`ftlab regs --at SYM+OFFS` shows a kprobe inside it"
            ),
        ),
        (["-o", "r.html", "--at", "add3"], "fib(3) never reached add3"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys, arch, args, error):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--arch", arch, "funcs", "fib(3)", *args]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"ftlab: error: {error}\n")
    assert [p.name for p in tmp_path.iterdir()] == []
