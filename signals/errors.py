"""The project's exception tree.

::

    ProfileStreamError                 root; ``retriable`` says if a retry can help
    ├── InvalidTimezoneError           a tenant time zone that is not an IANA name
    ├── StoreError                     Redis failed or is unreachable (retriable)
    ├── InvalidEventError              an inbound record breaks contract section 1
    └── segments.errors.SegmentError   see that module

Errors of redis-py, aiokafka and pydantic are translated where they enter the
project and chained with ``from exc``.
"""

from __future__ import annotations


class ProfileStreamError(Exception):
    """Root of every error this project raises on purpose."""

    retriable: bool = False


class InvalidTimezoneError(ProfileStreamError, ValueError):
    pass


class StoreError(ProfileStreamError):
    retriable = True


class InvalidEventError(ProfileStreamError):
    """A record that goes to the dead-letter topic; ``reason`` is readable."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
