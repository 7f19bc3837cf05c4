"""Runs a bench module as the service's venv would: without pandas.

pandas is a bench extra (the seed's path needs it), never a runtime dependency: `pip install .` leaves it
out. The Snowflake connector imports it whenever it can (40 MB, and it asks Arrow for the system
allocator), so a recomamp load measured in the bench's venv would carry a library production never loads.

Usage: python -m bench.as_installed MODULE [ARGS...]
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType

ABSENT = ("pandas",)


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def main() -> None:
    sys.meta_path.insert(0, _NotInstalled())
    module, *arguments = sys.argv[1:]
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
