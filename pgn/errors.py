"""The one exception type the toolkit raises for problems a user can fix."""

from __future__ import annotations


class PGNError(ValueError):
    """A user-facing error: one line that says what was wrong and what to do.

    Command-line tools print it as a single line and exit with status 1; library callers can catch it.
    It subclasses :class:`ValueError` because nearly every case is a bad value (a shape, a file, an option).
    """
