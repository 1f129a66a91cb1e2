"""`python -m fp8pipe`: the command line."""

import sys

from .cli import main

sys.exit(main())
