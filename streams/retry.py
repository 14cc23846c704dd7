"""One retry policy for every call that may fail for a while.

Redis restarting, a broker election, a lost connection: the worker waits and
tries again, with capped exponential backoff, for as long as it takes, and
logs at WARNING once per outage rather than once per attempt. Errors that a
retry cannot fix (``retriable`` false) are raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis import exceptions as redis_errors

from signals.errors import ProfileStreamError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, ProfileStreamError):
        return exc.retriable
    return isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_seconds: float = 0.05
    max_seconds: float = 5.0
    #: ``None`` retries until the call succeeds or the task is cancelled.
    max_attempts: int | None = None

    def delay(self, attempt: int) -> float:
        base = min(self.max_seconds, self.initial_seconds * float(2**attempt))
        return base * (0.5 + random.random() / 2)

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                result = await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_retriable(exc) or (
                    self.max_attempts is not None and attempt + 1 >= self.max_attempts
                ):
                    raise
                if attempt == 0:
                    logger.warning("%s failed, retrying: %s", what, exc)
                attempt += 1
                await asyncio.sleep(self.delay(attempt))
                continue
            if attempt:
                logger.info("%s succeeded after %d retries", what, attempt)
            return result
