"""Conformance checks (issue #13). A placeholder for the package the `check` helper writes: only
corpus.py is here in this branch."""
