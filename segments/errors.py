"""Errors of the segments subsystem.

::

    ProfileStreamError            signals.errors, the project's root
    └── SegmentError              anything wrong with a segment
        └── RuleError             a definition refused; ``path`` names the part

A ``RuleError`` is what the HTTP API turns into a 422: ``path`` locates the
failing part of the submitted body in the notation clients see in their own
JSON (``rule.any[0].all[1].value``) and ``message`` says what is wrong with it.
Neither is retriable: the same body is refused again.
"""

from __future__ import annotations

from signals.errors import ProfileStreamError


class SegmentError(ProfileStreamError):
    """Root of the errors raised about segments and their rules."""


class RuleError(SegmentError):
    """A segment definition or rule that breaks contract section 3.

    ``path`` is empty when the body as a whole is wrong (not JSON, not an
    object); ``str(err)`` is then just the message.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
