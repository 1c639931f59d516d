"""How gpuknn's commands log: one format, to standard output, set once per process (the
``gpuknn`` command and each worker process of ``gpuknn serve``)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def configure() -> None:
    """Log INFO and above to standard output (a no-op where logging is configured)."""
    logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stdout)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every attempt
