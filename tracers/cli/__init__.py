"""The ftlab command line: commands, views, demo and bench."""

from .main import main

__all__ = ["main"]
