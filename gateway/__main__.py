"""`python -m gateway [selftest]`: the same as `bikeguard gateway [selftest]`."""

import sys

from gateway.cli import main

sys.exit(main())
