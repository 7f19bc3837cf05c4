"""recomamp: runs Amazon Marketing Cloud workflows on schedules and loads the results into Snowflake."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recomamp")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
