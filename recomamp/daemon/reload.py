"""A reload (SIGHUP or `recomamp reload`): the new config, merged with the running one from the ONE list of
restart-only keys (`config.RESTART_ONLY_PREFIXES`), and the verdict `recomamp reload` prints.

Keys that need a restart keep their running values, so nothing is half-applied: the new config is taken with
each restart-only key put back as it runs, and the keys that changed are reported as applied or as needing a
restart. A prefix ending in "." is a whole section ("database."); any other names one key ("metrics.listen").
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel

from recomamp.config import RESTART_ONLY_PREFIXES, Config, changed_keys, restart_only


class ReloadVerdict(NamedTuple):
    """What a reload did: `recomamp reload` prints it, and exits non-zero when it was refused."""

    applied: bool
    problems: tuple[str, ...]
    changed_keys: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()


class Merged(NamedTuple):
    config: Config  # the new config with every restart-only key at its running value
    applied: list[str]  # the changed keys that take effect now
    needs_restart: list[str]  # the changed keys that wait for a restart


def merge(running: Config, new: Config) -> Merged:
    keys = changed_keys(running, new)
    needs_restart = restart_only(keys)
    return Merged(keep_restart_only(running, new), [key for key in keys if key not in needs_restart], needs_restart)


def keep_restart_only(running: Config, new: Config) -> Config:
    """`new`, with each key of RESTART_ONLY_PREFIXES as it is in `running`."""
    sections: dict[str, Any] = {}
    fields: dict[str, dict[str, Any]] = {}
    for prefix in RESTART_ONLY_PREFIXES:
        section, _, key = prefix.partition(".")
        if not key:
            sections[section] = getattr(running, section)
        else:
            fields.setdefault(section, {})[key] = getattr(getattr(running, section), key)
    for section, kept in fields.items():
        if section not in sections:
            model: BaseModel = getattr(new, section)
            sections[section] = model.model_copy(update=kept)
    return new.model_copy(update=sections)
