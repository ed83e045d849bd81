"""The one exception tree of monitor.

Every error monitor raises on purpose derives from :class:`MonitorError`; third-party
errors are wrapped where they enter (``raise FetchError(...) from exc``), and the CLI
catches the base class and prints one line::

    MonitorError
    ├── ConfigError        the configuration (file, environment, options) is invalid
    ├── SourceError        a backfill source cannot be read (missing, unreadable, binary)
    │   └── ParseError     bytes that are not a feed or article we can read
    ├── FetchError         an HTTP fetch failed (network, status, limits)
    ├── StoreError         the database refused or is unreachable
    ├── TranslateError     a translation model is missing, corrupt or failed
    ├── EmbedError         the embedding model is missing or failed
    ├── StoryError         a split or merge that cannot be done
    └── DeliveryError      the digest could not be delivered
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base class: ``str(error)`` is one line a user can act on."""


class ConfigError(MonitorError):
    """The configuration is invalid; ``problems`` lists every problem with its key path."""

    def __init__(self, problems: list[str] | str, source: str = "config") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.problems))


class SourceError(MonitorError):
    """A backfill source (file, directory, URL) cannot be read."""


class ParseError(SourceError):
    """Bytes that are neither a feed nor an article we can read."""


class FetchError(MonitorError):
    """An HTTP fetch failed; ``retry_after`` is set when the server asked for a pause."""

    def __init__(self, url: str, reason: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{url}: {reason}")


class StoreError(MonitorError):
    """The database refused an operation or cannot be reached."""


class TranslateError(MonitorError):
    """A translation model is missing, corrupt, or failed."""


class EmbedError(MonitorError):
    """The embedding model is missing or failed."""


class StoryError(MonitorError):
    """A split or merge that cannot be done (no such item or story, nothing to split)."""


class DeliveryError(MonitorError):
    """The digest could not be delivered."""
