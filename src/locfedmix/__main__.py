"""`python -m locfedmix` runs the command line."""

import sys

from locfedmix.cli import main

sys.exit(main())
