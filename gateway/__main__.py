"""`python -m gateway [selftest]`: the same as `bikeguard gateway [selftest]`."""

import sys

from gateway.station import main

sys.exit(main())
