"""The start check of the spool: right for several replicas in one process, and a message that says what to set."""

from __future__ import annotations

import threading
from pathlib import Path

from recomamp.daemon.process import spool_problem


def test_replicas_checking_one_spool_at_once_all_pass(tmp_path: Path) -> None:
    # Three replicas of one process (the fleet tests, an embedded demo) start together on one spool; a probe
    # named from the pid alone let one replica unlink the file another was about to unlink (ENOENT at start).
    spool = tmp_path / "spool"
    problems: list[str] = []
    start = threading.Barrier(3)

    def replica() -> None:
        start.wait()
        for _ in range(300):
            problem = spool_problem(spool)
            if problem is not None:
                problems.append(problem)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    assert list(spool.iterdir()) == []  # no probe left behind


def test_a_spool_that_cannot_be_made_names_the_key_and_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    problem = spool_problem(blocker / "spool")
    assert problem is not None
    assert problem.startswith(f"[daemon] spool_dir {blocker / 'spool'} cannot be written (")
    assert "set a directory the daemon may write" in problem
