"""One log line from code that runs in a PyFlink Python worker.

Pitfall: a process-mode Python worker (where pandas UDFs always run, and every Python function when
``python.execution-mode`` is ``process``) replaces ``print`` with one that takes no ``flush`` argument:
``print(..., flush=True)`` raises there, and a line logged from an ``except`` branch then fails the task it
was protecting (a drift warning restarted the job every 20,000 rows this way)."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """Print ``line`` and flush stdout, with any worker's ``print``."""
    print(line)
    sys.stdout.flush()
