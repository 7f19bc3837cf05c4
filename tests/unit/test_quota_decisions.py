"""When a run that AMC refused for its quota goes again: pure decisions, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from recomamp.domain.quota import RefusalWait, kept_slot_recheck_at, next_slot_after_refusal

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_amcs_retry_after_comes_first() -> None:
    wait = next_slot_after_refusal(
        now=NOW,
        local_used=3,
        local_oldest=NOW - timedelta(hours=1),
        window_seconds=86_400,
        retry_after_seconds=90,
        fallback_seconds=3600,
    )
    assert wait == RefusalWait(NOW + timedelta(seconds=90), "retry_after")


def test_without_retry_after_the_run_waits_until_our_oldest_submission_ages_out() -> None:
    wait = next_slot_after_refusal(
        now=NOW,
        local_used=4,
        local_oldest=NOW - timedelta(seconds=3.5),
        window_seconds=4.0,
        retry_after_seconds=None,
        fallback_seconds=3600,
    )
    assert wait == RefusalWait(NOW + timedelta(seconds=0.5), "our_oldest_submission")  # not an hour


def test_with_none_of_ours_in_the_window_it_looks_again_after_the_fallback_never_past_one_window() -> None:
    def after(fallback: float, window: float) -> datetime:
        return next_slot_after_refusal(
            now=NOW,
            local_used=0,
            local_oldest=None,
            window_seconds=window,
            retry_after_seconds=None,
            fallback_seconds=fallback,
        ).until

    assert after(3600, 86_400) == NOW + timedelta(hours=1)
    assert after(3600, 4.0) == NOW + timedelta(seconds=4)


def test_a_backfill_that_left_the_last_slot_looks_again_within_the_window() -> None:
    assert kept_slot_recheck_at(NOW, 86_400) == NOW + timedelta(seconds=60)
    assert kept_slot_recheck_at(NOW, 4.0) == NOW + timedelta(seconds=4)
