"""What `check` found for one object on one arch: a row per function and mechanism, and a line per
failure naming function, mechanism, field and PC; as a table (`ftlab regs`' style) or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("ok", "FAIL", "n/a")


@dataclass(frozen=True)
class Row:
    function: str
    mechanism: str
    status: str  # 'ok', 'FAIL' or 'n/a'
    detail: str  # what was checked ('2 calls, 4 snapshots'), or why n/a
    refused: tuple[str, ...] = ()  # kprobe: the instructions the kernel's rules refuse, and why


@dataclass
class ObjectReport:
    """Plain data throughout, so that a process pool can hand it back (check --corpus)."""

    path: str
    arch: str
    kernel: str
    mechanisms: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    calls: int = 0  # call lines run

    @property
    def ok(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    def summary(self) -> str:
        c = self.counts()
        functions = len({r.function for r in self.rows})
        verdict = "PASS" if self.ok else "FAIL"
        if not self.rows:  # the object did not load, or the calls did not parse
            return f"{verdict} {self.name} {self.arch}: nothing checked ({len(self.failures)} failure lines)"
        return (
            f"{verdict} {self.name} {self.arch}: {c['ok']} ok, {c['n/a']} n/a, {c['FAIL']} FAIL "
            f"({functions} functions, {self.calls} call lines, {len(self.failures)} failure lines)"
        )

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "arch": self.arch,
            "kernel": self.kernel,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "calls": self.calls,
            "mechanisms": self.mechanisms,
            "rows": [
                {"function": r.function, "mechanism": r.mechanism, "status": r.status, "detail": r.detail}
                | ({"refused": list(r.refused)} if r.refused else {})
                for r in self.rows
            ],
            "failures": self.failures,
        }

    def table(self) -> list[str]:
        """Function x mechanism: each cell its status (a kprobe's with the instructions it probed
        of the function's), then why each n/a, each failure, and the summary line."""
        cells: dict[str, dict[str, str]] = {}
        for r in self.rows:
            cell = r.status
            if r.mechanism == "kprobe" and r.status != "n/a":
                cell += " " + r.detail.split(" ", 1)[0]  # 'ok 12/14'
            cells.setdefault(r.function, {})[r.mechanism] = cell
        width = max([len("function"), *map(len, cells)])
        cols = [max(len(m), 9) for m in self.mechanisms]
        lines = [f"# {self.name} ({self.arch}, Linux {self.kernel})"]
        if not self.rows:
            return [*lines, *self.failures, self.summary()]
        lines.append(
            f"{'function':<{width}}  " + "  ".join(f"{m:<{w}}" for m, w in zip(self.mechanisms, cols, strict=True))
        )
        for func, row in cells.items():
            lines.append(
                f"{func:<{width}}  "
                + "  ".join(f"{row.get(m, '-'):<{w}}" for m, w in zip(self.mechanisms, cols, strict=True))
            )
        lines = [line.rstrip() for line in lines]
        lines += self._notes()
        if any(r.mechanism == "kprobe" and r.status != "n/a" for r in self.rows):
            lines.append(
                "kprobe N/M: N of the function's M instructions probed, the rest refused by the kernel's "
                "rules (--format json says why)"
            )
        lines += self.failures
        lines.append(self.summary())
        return lines

    def _notes(self) -> list[str]:
        """Why each n/a, one line per function and reason: `n/a fib kretprobe, fprobe: why`, or
        `n/a fib: why` when it holds for every mechanism."""
        by: dict[tuple[str, str], list[str]] = {}
        for r in self.rows:
            if r.status == "n/a":
                by.setdefault((r.function, r.detail), []).append(r.mechanism)
        out = []
        for (func, why), mechs in by.items():
            which = "" if len(mechs) == len(self.mechanisms) else " " + ", ".join(mechs)
            out.append(f"n/a {func}{which}: {why}")
        return out
