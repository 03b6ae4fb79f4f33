"""``python -m ModelSelectorLib`` runs the ``modelselector`` command (used by the Slicer module)."""

import sys

from .cli import main

sys.exit(main())
