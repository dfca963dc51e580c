"""The ``authz`` command line: every command in one package (``main`` dispatches)."""

from authz.cli.main import main

__all__ = ["main"]
