"""The commissioning self-test: checks one station on its pole, step by step, with advice for the installer.

`bikeguard gateway selftest` (gateway/cli.py) runs it from the command line; `SelfTest.steps()` yields each
StepResult as it completes and publishes it for the backend (the installer's web page shows them live), `SelfTest.run()`
returns the whole Report. Every step says what it measured and, when it fails, what to check; a step whose
input failed is skipped with the reason, never silently passed. hardware/commissioning.md and docs/installer.md
are the installer's side.

- `radio_side`: 1 serial port opens, 2 radio module answers, 3 noise floor, 4 test tag is read
- `clock`: 5 clock is in sync
- `uplink_side`: 6 broker accepts the station, 7 heartbeat comes back, 8 backend shows it online
- `publisher`: each step, then the run's summary, on `stations/{id}/selftest` over the uplink's connection
- `runner`: the order and dependencies of the steps
"""

from gateway.selftest.clock import NtpStatus, parse_chronyc_tracking, probe_ntp
from gateway.selftest.report import STEPS, Report, StepResult, format_step, format_summary
from gateway.selftest.runner import SelfTest
from gateway.selftest.settings import SelfTestSettings

__all__ = [
    "STEPS",
    "NtpStatus",
    "Report",
    "SelfTest",
    "SelfTestSettings",
    "StepResult",
    "format_step",
    "format_summary",
    "parse_chronyc_tracking",
    "probe_ntp",
]
