"""Entry point of `python -m workers.installer` (no Django needed)."""
import sys

from .cli import main

sys.exit(main())
