"""``python -m aepipe.cli``."""

import sys

from aepipe.cli import main

sys.exit(main())
