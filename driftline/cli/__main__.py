"""`python -m driftline.cli`: the same as the `driftline` command."""

import sys

from driftline.cli import main

sys.exit(main())
