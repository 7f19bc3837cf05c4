"""Errors an operation raises for the person at the shell, in a module light enough for the CLI to import at once."""


class DatabaseUnreachable(Exception):
    """The database in [database] dsn did not answer: where (never the password), and why."""
