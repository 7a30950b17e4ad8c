"""``python -m planner`` = the ``planner`` console script."""

import sys

from planner.cli import main

sys.exit(main())
