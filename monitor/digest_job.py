"""Deliver the digest exactly once per (digest date, recipient), on demand or on schedule.

The window of the digest for day D ends at D's send time (``digest.time`` in
``digest.timezone``) and starts where the previous digest sent ended (the first one
covers 24 hours). One sender per day in the whole cluster: a delivery run holds a
PostgreSQL advisory lock on the day while it sends (another worker that finds it taken
leaves the day to the holder). Then, for every recipient not yet served: claim the
delivery (one more attempt, held for ``LEASE``), send, and only once the server has
accepted the message write the ``digests_sent`` row, unique per day and recipient. A
failure keeps its error on the attempt row; the daemon retries it at its next tick, at
most ``MAX_ATTEMPTS`` times a day.

In the daemon (:func:`schedule_digest`): a cron job at the send time that also runs once
at start-up (the catch-up: today's digest, if its time has passed and it was not sent),
and a retry job every ``RETRY_MINUTES`` that only retries failed deliveries. All state is
in the database, so a restart neither loses nor repeats a digest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor import db, logs, mailer, store
from monitor.config import Settings
from monitor.coordination import try_xact_lock
from monitor.digest import Digest, Window, build_digest, render_html, render_text, send_time
from monitor.errors import DeliveryError, MonitorError

log = logs.get("monitor.digest")
MAX_ATTEMPTS = 5
RETRY_MINUTES = 10
LEASE = timedelta(minutes=10)
FIRST_WINDOW = timedelta(hours=24)

Connect = Callable[[mailer.SmtpTarget], AbstractContextManager[mailer.Connection]]


@dataclass(frozen=True)
class DeliveryReport:
    """What one delivery run did, per recipient."""

    day: date
    stories: int
    sent: tuple[str, ...] = ()
    already: tuple[str, ...] = ()  # sent before
    held: tuple[str, ...] = ()  # another sender holds it, or no attempts left today
    failed: tuple[tuple[str, str], ...] = ()  # (recipient, reason)
    empty: bool = False  # nothing new: not sent (digest.send_empty is false)

    def lines(self) -> list[str]:
        day = self.day.isoformat()
        if self.empty:
            return [f"nothing new for {day}: not sent (digest.send_empty is false)"]
        stories = f"{self.stories} {'story' if self.stories == 1 else 'stories'}"
        return ([f"sent the {day} digest ({stories}) to {r}" for r in self.sent]
                + [f"already sent the {day} digest to {r}" for r in self.already]
                + [f"not sending the {day} digest to {r} now: another sender holds it or "
                   f"{MAX_ATTEMPTS} attempts failed today" for r in self.held])

    def error(self) -> DeliveryError | None:
        """One error naming every failed recipient, or None."""
        if not self.failed:
            return None
        first = self.failed[0][1]
        if all(reason == first for _, reason in self.failed):
            who = ", ".join(r for r, _ in self.failed)
            return DeliveryError(f"digest {self.day} not delivered to {who}: {first}")
        return DeliveryError(f"digest {self.day} not delivered: " + "; ".join(
            f"{r}: {reason}" for r, reason in self.failed))


def window_for(session: Session, day: date, settings: Settings, *,
               since: datetime | None = None,
               until: datetime | None = None) -> tuple[Window, datetime | None]:
    """The window of ``day``'s digest, and after when a late-fetched older item counts."""
    d = settings.digest
    end = until or send_time(day, d.time, d.timezone)
    previous = store.previous_digest(session, day)
    if since is not None:
        return Window(since, end), None
    if previous is None or previous.window_end >= end:
        return Window(end - FIRST_WINDOW, end), None
    return Window(previous.window_end, end), None if until else previous.sent_at


def build(settings: Settings, sessions: sessionmaker[Session], day: date, *,
          since: datetime | None = None, until: datetime | None = None) -> Digest:
    """Read what the digest of ``day`` shows (nothing is written) and build it."""
    with sessions() as session:
        window, late_after = window_for(session, day, settings, since=since, until=until)
        stories = store.digest_stories(session, window.since, window.until, late_after)
        health = store.feed_health(session, window.since, window.until)
        session.rollback()
    return build_digest(day, window, stories, health, topics=settings.topics,
                        timezone=settings.digest.timezone, target=settings.translation.target)


def deliver(settings: Settings, sessions: sessionmaker[Session], digest: Digest,
            recipients: Sequence[str], target: mailer.SmtpTarget, *, now: datetime | None = None,
            max_attempts: int | None = None, connect: Connect = mailer.connect) -> DeliveryReport:
    """Send ``digest`` to each recipient not yet served; never raises for a refused
    delivery (it is in the report), only for a database failure."""
    now = now or datetime.now(UTC)
    if digest.empty and not settings.digest.send_empty:
        return DeliveryReport(digest.day, 0, empty=True)
    with db.transaction(sessions) as session:
        already = store.sent_to(session, digest.day)
    todo = [r for r in dict.fromkeys(recipients) if r not in already]
    with sessions() as lock, lock.begin():  # the advisory lock lives as long as this
        sole = try_xact_lock(lock, "digest", digest.day.isoformat())
        claimed = [r for r in todo if sole and _claim(sessions, digest.day, r, now,
                                                      max_attempts)]
        sent, failed = _send_all(settings, sessions, digest, claimed, target, now,
                                 connect) if claimed else ([], [])
    return DeliveryReport(digest.day, digest.counts.stories, tuple(sent),
                          already=tuple(r for r in dict.fromkeys(recipients) if r in already),
                          held=tuple(r for r in todo if r not in claimed), failed=tuple(failed))


def _claim(sessions: sessionmaker[Session], day: date, recipient: str, now: datetime,
           max_attempts: int | None) -> bool:
    with db.transaction(sessions) as session:
        return store.claim_delivery(session, day, recipient, now, now + LEASE, max_attempts)


def _send_all(settings: Settings, sessions: sessionmaker[Session], digest: Digest,
              recipients: Sequence[str], target: mailer.SmtpTarget, now: datetime,
              connect: Connect) -> tuple[list[str], list[tuple[str, str]]]:
    text, html = render_text(digest), render_html(digest)
    sender = settings.digest.sender
    sent: list[str] = []
    failed: list[tuple[str, str]] = []
    try:
        with connect(target) as connection:
            for recipient in recipients:
                message = mailer.compose(subject=digest.subject, text=text, html=html,
                                         sender=sender, recipient=recipient, day=digest.day,
                                         now=now)
                try:
                    connection.send(message, sender, recipient)
                except DeliveryError as exc:
                    failed.append((recipient, str(exc)))
                    continue
                _record_sent(sessions, digest, recipient, str(message["Message-ID"]))
                sent.append(recipient)
    except DeliveryError as exc:  # no session at all: every recipient not yet served failed
        failed += [(r, str(exc)) for r in recipients if r not in sent]
    for recipient, reason in failed:
        with db.transaction(sessions) as session:
            store.release_delivery(session, digest.day, recipient, reason[:2000])
    return sent, failed


def _record_sent(sessions: sessionmaker[Session], digest: Digest, recipient: str,
                 message_id: str) -> None:
    with db.transaction(sessions) as session:
        store.record_sent(session, digest.day, recipient, message_id, digest.counts.stories,
                          (digest.window.since, digest.window.until), datetime.now(UTC))


# --- the daemon's jobs -----------------------------------------------------------------


def digest_job(settings: Settings, sessions: sessionmaker[Session], *,
               now: datetime | None = None, retries_only: bool = False,
               connect: Connect = mailer.connect) -> DeliveryReport | None:
    """The scheduler's job: once today's send time has come, deliver today's digest to
    every configured recipient not yet served (``retries_only``: only to those whose
    delivery failed before). Bounded by ``MAX_ATTEMPTS``; logs, never raises."""
    now = now or datetime.now(UTC)
    d = settings.digest
    today = now.astimezone(ZoneInfo(d.timezone)).date()
    if not d.recipients or now < send_time(today, d.time, d.timezone):
        return None
    try:
        recipients = _due_recipients(settings, sessions, today, retries_only)
        if not recipients:
            return None
        digest = build(settings, sessions, today)
        report = deliver(settings, sessions, digest, recipients, mailer.target_of(d), now=now,
                         max_attempts=MAX_ATTEMPTS, connect=connect)
    except (MonitorError, SQLAlchemyError) as exc:
        log.error("digest.failed", day=today.isoformat(), error=_one_line(exc))
        return None
    except Exception:  # noqa: BLE001 - a surprise is logged; the next run tries again
        log.exception("digest.crashed", day=today.isoformat())
        return None
    _log(report)
    return report


def _due_recipients(settings: Settings, sessions: sessionmaker[Session], day: date,
                    retries_only: bool) -> list[str]:
    with sessions() as session:
        if retries_only:
            failed = store.failed_deliveries(session, day)
            return [r for r in settings.digest.recipients if r in failed]
        sent = store.sent_to(session, day)
        return [r for r in settings.digest.recipients if r not in sent]


def _log(report: DeliveryReport) -> None:
    if report.empty:
        log.info("digest.empty", day=report.day.isoformat())
    for recipient in report.sent:
        log.info("digest.sent", day=report.day.isoformat(), to=recipient, stories=report.stories)
    for recipient in report.held:
        log.warning("digest.held", day=report.day.isoformat(), to=recipient)
    for recipient, reason in report.failed:
        log.error("digest.not_delivered", day=report.day.isoformat(), to=recipient,
                  error=reason, retry_in_minutes=RETRY_MINUTES)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]


def schedule_digest(scheduler: Any, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Add the digest jobs to an APScheduler 3 scheduler: a cron job at ``digest.time`` in
    ``digest.timezone`` that also runs at start-up (catch-up), and the retry job."""
    from apscheduler.triggers.cron import CronTrigger

    d = settings.digest
    if not d.recipients:
        log.info("digest.disabled", reason="digest.recipients is empty")
        return
    hour, minute = (int(part) for part in d.time.split(":"))
    scheduler.add_job(digest_job, CronTrigger(hour=hour, minute=minute, timezone=d.timezone),
                      args=(settings, sessions), id="digest", max_instances=1, coalesce=True,
                      misfire_grace_time=3600, next_run_time=datetime.now(UTC))
    scheduler.add_job(digest_job, "interval", minutes=RETRY_MINUTES, args=(settings, sessions),
                      kwargs={"retries_only": True}, id="digest-retry", max_instances=1,
                      coalesce=True)
