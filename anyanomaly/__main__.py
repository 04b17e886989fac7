"""`python -m anyanomaly ...`: the same as the `anyanomaly` command."""

import sys

from anyanomaly.cli import main

sys.exit(main())
