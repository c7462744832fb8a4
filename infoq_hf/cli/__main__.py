"""`python -m infoq_hf.cli`: the `infoq` command."""

import sys

from . import main

sys.exit(main())
