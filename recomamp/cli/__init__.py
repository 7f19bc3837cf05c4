"""The `recomamp` command, one module per noun. Exit codes: 0 success, 1 failure, 2 bad input."""

from recomamp.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
