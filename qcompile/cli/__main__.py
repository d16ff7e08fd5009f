"""`python -m qcompile.cli ...` runs the `qcompile` command."""

import sys

from qcompile.cli.app import main

sys.exit(main())
