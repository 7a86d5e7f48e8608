"""Prefect flows: thin wrappers that call aepipe's stage functions.

Importing this package sets safe defaults for Prefect's environment before
Prefect itself is imported: PREFECT_HOME in a temp directory (not the user's
home) unless set, and a startup timeout long enough for a cold machine.
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / f"aepipe-prefect-{os.getuid()}"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
