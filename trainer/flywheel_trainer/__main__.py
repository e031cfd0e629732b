"""Entry point: ``python -m flywheel_trainer``."""

import sys

from .cli import main

sys.exit(main())
