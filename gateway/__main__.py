"""`python -m gateway`: the same as `bikeguard gateway`."""

import sys

from gateway.station import main

sys.exit(main())
