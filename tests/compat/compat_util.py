"""Helpers shared by the compatibility tests: polling with deadlines (never blind sleeps) and unique names."""

import time
import uuid

DEFAULT_TIMEOUT = 60.0


class Timeout(AssertionError):
    pass


def wait_until(probe, what, timeout=DEFAULT_TIMEOUT, interval=0.25, ignore=()):
    """Calls probe() until it returns something truthy, and returns that. Exceptions of the types in
    `ignore` count as "not yet"; any other exception propagates at once. Raises Timeout (an
    AssertionError) naming `what` and the last value or exception after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except ignore as e:  # noqa: B030 - a tuple of exception types
            last = e
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def unique(prefix):
    """A lowercase name unique to this run, valid as a Marathon path segment, a Chronos job name and a
    Metronome job id."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
