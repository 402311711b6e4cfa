"""`python -m attnhash` = the attnhash command."""

import sys

from attnhash.cli import main

sys.exit(main())
