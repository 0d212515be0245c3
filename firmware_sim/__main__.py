"""`python -m firmware_sim`: run a simulated town on ptys."""

from firmware_sim.runner import main

raise SystemExit(main())
