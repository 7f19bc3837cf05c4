"""recomamp: runs Amazon Marketing Cloud workflows on schedules and loads the results into Snowflake."""

import os
import sys
from importlib.metadata import PackageNotFoundError, version

# Arrow picks its allocator at its first allocation, before any code of ours could: jemalloc from the start
# (snowflake/staging.configure_arrow_memory says why) keeps 20 MB less resident than switching to it later
# from mimalloc. An operator's own setting wins. Linux only: the wheels built elsewhere may lack jemalloc.
if sys.platform == "linux":
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

try:
    __version__ = version("recomamp")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
