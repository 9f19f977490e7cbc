"""``python -m scl_loss.glue``."""

import sys

from scl_loss.glue.cli import main

sys.exit(main())
