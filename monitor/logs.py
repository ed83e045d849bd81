"""Logs are events with fields (``feed.fetched feed=... status=304``), configured only
by the CLI: readable on a console, JSON lines under Docker (``--log-format json``).

A logged exception carries a plain traceback, never the frames' local variables: those
hold passwords (``smtplib.SMTP.login(user, password)``) and database URLs. structlog's
console renderer would print them through rich when rich is installed."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {0: logging.WARNING, 1: logging.INFO}


def configure(fmt: str = "console", verbosity: int = 0) -> None:
    """Send structured events to stderr in the chosen format."""
    level = LEVELS.get(verbosity, logging.DEBUG)
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json" else
        [structlog.dev.ConsoleRenderer(colors=False,
                                       exception_formatter=structlog.dev.plain_traceback)])
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
