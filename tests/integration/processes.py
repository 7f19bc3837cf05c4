"""Real `recomamp run` processes for tests: start, pause (SIGSTOP), resume, kill -9, and read their JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Replica:
    name: str
    config: Path
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    generation: int = 0
    logs: list[Path] = field(default_factory=list)

    async def start(self) -> None:
        self.generation += 1
        log = self.log_dir / f"{self.name}.{self.generation}.log"
        self.logs.append(log)
        with log.open("wb") as output:  # the child keeps its own descriptor
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "recomamp",
                "run",
                "--config",
                str(self.config),
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                env={
                    **os.environ,
                    "RECOMAMP_DAEMON__REPLICA_NAME": f"{self.name}-{self.generation}",
                    "PYTHONWARNINGS": "ignore",
                    **self.env,
                },
            )

    def send(self, signum: int) -> None:
        assert self.process is not None and self.process.returncode is None
        self.process.send_signal(signum)

    def pause(self) -> None:
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        self.send(signal.SIGCONT)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (resumed first if paused), and the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line of every generation, each tagged with the process that wrote it."""
        lines: list[dict[str, Any]] = []
        for generation, log in enumerate(self.logs, start=1):
            if not log.exists():
                continue
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    event["_process"] = f"{self.name}-{generation}"
                    lines.append(event)
        return lines


def count_events(replicas: list[Replica], event: str) -> dict[int, int]:
    """How many times each run logged `event`, over every replica and generation."""
    counts: dict[int, int] = defaultdict(int)
    for replica in replicas:
        for line in replica.events():
            if line.get("event") == event and line.get("run_id") is not None:
                counts[int(line["run_id"])] += 1
    return dict(counts)


def overlapping_coroutines(replicas: list[Replica]) -> list[tuple[str, int]]:
    """(process, run id) for each run that had two coroutines at once in one process: must be empty.

    A coroutine begins with `run_started` and ends with `run_left`, logged for every way it ends."""
    overlaps: list[tuple[str, int]] = []
    for replica in replicas:
        open_runs: dict[tuple[str, int], int] = defaultdict(int)
        for line in replica.events():
            run_id = line.get("run_id")
            if run_id is None:
                continue
            key = (line["_process"], int(run_id))
            if line.get("event") == "run_started":
                open_runs[key] += 1
                if open_runs[key] > 1:
                    overlaps.append(key)
            elif line.get("event") == "run_left":
                open_runs[key] -= 1
    return overlaps


async def stop_all(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.process is not None and replica.process.returncode is None:
            await replica.stop()
