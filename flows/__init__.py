"""Prefect flows: thin wrappers that call aepipe's stage functions.

Importing this package sets safe defaults for Prefect's environment before
Prefect itself is imported: PREFECT_HOME in a temp directory (not the user's
home) unless set, a startup timeout long enough for a cold machine, and the
library's loggers ("aepipe", INFO) attached to Prefect's flow-run logs.
"""

import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / f"aepipe-prefect-{os.getuid()}"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's client-side usage telemetry (and its first-run notice on a terminal): off unless the user
# opts in, like the server analytics above; a batch pipeline should not phone home by default.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "aepipe")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # library calls outside a flow run
if logging.getLogger("aepipe").level == logging.NOTSET:  # e.g. a served flow run's fresh process
    logging.getLogger("aepipe").setLevel(logging.INFO)
