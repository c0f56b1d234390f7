"""Errors the lab reports to users: each one is a single line saying what and where."""


class FtlabError(Exception):
    """Bad input or a failed run; str(err) is the one-line message shown to the user."""


class GuestFault(FtlabError):
    """The emulated code faulted (unmapped access, invalid instruction, unexpected trap)."""


class BudgetExhausted(FtlabError):
    """The guest ran past its instruction budget (runaway or very long code)."""
