"""Ending the worker process when one of its loops fails, so that its supervisor restarts it.

Inside Faust, an exception that escapes an agent restarts the agent in the same process (the
records it held are never acknowledged, so the partition's commits stop silently), and one that
escapes the consumer's fetch loop ends that service. Neither redelivers anything. The worker
therefore ends the whole process instead, with one clear log line and status :data:`EXIT_CRASH`:
systemd, compose or Kubernetes starts it again, the group reassigns the partitions, and every
record not yet acknowledged is read again from the last commit (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

__all__ = ["EXIT_CRASH", "crash"]

#: the worker's exit status after a failed loop (EX_SOFTWARE, sysexits.h)
EXIT_CRASH = 70

log = logging.getLogger(__name__)


def crash(what: str, exc: BaseException) -> NoReturn:
    """Log why ``what`` failed and end the process now (no final commit: unacknowledged records are redelivered)."""
    log.critical("%s failed (%s: %s); the worker exits with status %d so that its supervisor restarts it; "
                 "records not yet acknowledged will be redelivered", what, type(exc).__name__, exc, EXIT_CRASH,
                 exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_CRASH)
