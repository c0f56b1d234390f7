"""The machine: architecture descriptions, a Unicorn CPU at kernel privilege, ELF loading, assembling."""

from . import arch
from .errors import BudgetExhausted, FtlabError, GuestFault
from .machine import Machine

__all__ = ["arch", "Machine", "FtlabError", "GuestFault", "BudgetExhausted"]
