"""``ThrottledLog``: log a failure that may repeat on every call without flooding the log.

Fail-open paths (a predictor that raises, a plan source that breaks) keep serving and count
the failure. Logging every one would let one broken component fill the log, so a
``ThrottledLog`` writes the first failure at once and then at most one line per
``interval_s``, each saying how many failures it left out since the line before::

    pbkv predictor failed in forecast (ValueError: bad shape); failing open [41 more since]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledLog:
    """Counts every failure of one component (``num_failures``); logs at most one warning a
    ``interval_s`` (on ``clock``)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.logger = logger
        self.what = what
        self.interval_s = interval_s
        self.clock = clock
        self.num_failures = 0
        self._last_line_s: float | None = None
        self._left_out = 0  # failures since the last line that got none of their own

    def failed(self, where: str, error: BaseException | str) -> bool:
        """Count one failure in ``where``; log it (exception type and message) unless a line
        went out less than ``interval_s`` ago. Returns whether it logged."""
        self.num_failures += 1
        now = self.clock()
        if self._last_line_s is not None and now - self._last_line_s < self.interval_s:
            self._left_out += 1
            return False
        detail = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        more = f" [{self._left_out} more since]" if self._left_out else ""
        self.logger.warning("%s failed in %s (%s); failing open%s", self.what, where, detail, more)
        self._last_line_s = now
        self._left_out = 0
        return True
