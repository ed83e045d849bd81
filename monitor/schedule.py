"""When to poll a feed next. Pure: the daemon stores the answers on the feed's row.

Successful polls adapt the interval within bounds (more often when a poll brings mostly
new items, less often when it brings mostly known ones), never below the feed's own
``<ttl>`` or Cache-Control max-age. Failures back off exponentially up to the cap, and
a feed is never given up: it keeps being retried at the cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

BACKOFF_BASE_MINUTES = 5


@dataclass(frozen=True)
class Bounds:
    min_minutes: int = 5
    max_minutes: int = 1440
    default_minutes: int = 60


def adapt_interval(current: int, new: int, total: int, bounds: Bounds) -> int:
    """Halve the interval when most items were new, grow it by half when none were."""
    if total == 0 or new == 0:
        proposed = current * 1.5
    elif new / total >= 0.5:
        proposed = current / 2
    else:
        proposed = current
    return int(min(bounds.max_minutes, max(bounds.min_minutes, proposed)))


def floor_minutes(ttl_minutes: int | None, max_age_seconds: int | None) -> int:
    """The feed's own lower bound on the interval, in minutes."""
    return max(ttl_minutes or 0, -(-(max_age_seconds or 0) // 60))


def next_interval(current: int, new: int, total: int, floor: int, bounds: Bounds, *,
                  fixed: bool = False) -> int:
    """The interval to store after a successful poll.

    A configured (``fixed``) interval does not adapt; either way the feed's own floor
    (``<ttl>``, max-age) raises it, and the upper bound caps everything, the floor too,
    so a feed asking for a week is still polled daily."""
    adapted = current if fixed else adapt_interval(current, new, total, bounds)
    return min(bounds.max_minutes, max(adapted, floor))


def after_success(now: datetime, interval: int) -> datetime:
    return now + timedelta(minutes=interval)


def backoff_minutes(error_count: int, bounds: Bounds) -> int:
    """5, 10, 20, ... minutes after 1, 2, 3, ... failures in a row, capped at the upper bound."""
    exponent = min(max(0, error_count - 1), 32)  # 5 * 2**32 minutes is past any cap
    return int(min(bounds.max_minutes, BACKOFF_BASE_MINUTES * 2 ** exponent))


def after_failure(now: datetime, error_count: int, retry_after: float | None,
                  bounds: Bounds) -> datetime:
    """Capped exponential backoff; a server's Retry-After wins when it asks for longer."""
    wait = timedelta(minutes=backoff_minutes(error_count, bounds))
    if retry_after is not None:
        wait = max(wait, timedelta(seconds=min(retry_after, bounds.max_minutes * 60)))
    return now + wait
