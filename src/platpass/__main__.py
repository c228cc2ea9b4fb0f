"""``python -m platpass`` runs the command line."""

import sys

from platpass.cli import main

sys.exit(main())
