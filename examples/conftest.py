"""The project's own run of its example. Installed, ftlab's plugin is loaded by its pytest11 entry
point (make installs it) and a user needs no conftest.py; an install older than the entry point, or
PYTEST_DISABLE_PLUGIN_AUTOLOAD, loads it here instead (pluggy refuses a plugin loaded twice)."""

import sys

if "tracers.pytest_plugin" not in sys.modules:
    pytest_plugins = ["tracers.pytest_plugin"]
