"""Verify mode: the true registers at the instant each snapshot stands for, read from the emulator to
check the snapshot against, never to fill it.

One owner per lab. Each mechanism that can be verified (ftrace's sites, fgraph's return_to_handler,
rethook's trampoline, kprobes' points) is added with the addresses where its snapshots stand; users
hold it (acquire/release, counted, so that nested and concurrent users each keep theirs), and a code
hook reads every register at each address some held mechanism wants. The consumer building the
snapshot there takes that truth. With nothing held there is no code hook at all: each one slows
every instruction under the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

from emulator import FtlabError


@dataclass(eq=False)
class _Mechanism:
    name: str
    addresses: Callable[[], Iterable[int]]  # where its snapshots stand, now
    toggled: Callable[[], None] | None  # told when its first user comes or its last goes
    users: int = 0


class Verify:
    def __init__(self, machine):
        self.m = machine
        self._names = list(machine.arch.regs)
        self._regs = machine.register_batch(self._names)
        self._mechanisms: dict[object, _Mechanism] = {}
        self._hooks: dict[int, object] = {}
        self._truth: dict[int, dict[str, int]] = {}
        self._latest: dict[int, dict[str, int]] = {}  # the same, kept when taken (peek)

    def add(
        self, owner, name: str, addresses: Callable[[], Iterable[int]], toggled: Callable[[], None] | None = None
    ) -> None:
        """Make a mechanism (keyed by its core object) verifiable."""
        self._mechanisms[owner] = _Mechanism(name, addresses, toggled)

    def acquire(self, *owners) -> None:
        for owner in owners:
            mech = self._mechanism(owner)
            mech.users += 1
            if mech.users == 1:
                self._toggled(mech)

    def release(self, *owners) -> None:
        for owner in owners:
            mech = self._mechanism(owner)
            if mech.users == 0:
                raise FtlabError(f"verify: {mech.name} is released more often than it was acquired")
            mech.users -= 1
            if mech.users == 0:
                self._toggled(mech)

    @contextmanager
    def holding(self, *owners):
        self.acquire(*owners)
        try:
            yield self
        finally:
            self.release(*owners)

    def held(self, owner) -> bool:
        return self._mechanism(owner).users > 0

    def _mechanism(self, owner) -> _Mechanism:
        mech = self._mechanisms.get(owner)
        if mech is None:
            raise FtlabError(f"verify: {type(owner).__name__} is not a mechanism verify knows")
        return mech

    def _toggled(self, mech: _Mechanism) -> None:
        self.refresh()
        if mech.toggled is not None:
            mech.toggled()

    def refresh(self) -> None:
        """Hook exactly the addresses the held mechanisms want now (call when they change)."""
        want = set()
        for mech in self._mechanisms.values():
            if mech.users:
                want.update(mech.addresses())
        for addr in self._hooks.keys() - want:
            self.m.unhook(self._hooks.pop(addr))
            self._truth.pop(addr, None)  # never taken: no later snapshot may take it
            self._latest.pop(addr, None)
        for addr in want - self._hooks.keys():
            self._hooks[addr] = self.m.hook_code(self._capture, addr)

    def _capture(self, addr: int) -> None:
        self._truth[addr] = self._latest[addr] = dict(zip(self._names, self._regs.read(), strict=True))

    def peek(self, addr: int) -> dict[str, int] | None:
        """The true registers captured at addr last, whether a consumer took them or not: for a
        mechanism reached after another's snapshot there (a direct trampoline that ftrace_caller
        enters after its dispatch took the site's truth)."""
        return self._latest.get(addr)

    def take(self, addr: int) -> dict[str, int] | None:
        """The true registers captured at addr since the last take there, if verifying."""
        return self._truth.pop(addr, None)
