"""The fitting counter's programming cable for tests: a fixed port (a symlink, as udev makes /dev/ttyUSB0) that the
simulated chip put on the cable answers on, over a real pty."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from firmware_sim.programmer import ChipOnCable


class CounterCable:
    """The cable's port; `put(serial)` lays a blank simulated chip on it (the last one is taken off)."""

    def __init__(self, directory: Path) -> None:
        self.port = str(directory / "ttyBGCABLE")
        self.chips: list[ChipOnCable] = []

    def put(self, tag_id: int) -> ChipOnCable:
        """A blank chip of serial `tag_id` on the cable, answering at self.port."""
        chip = ChipOnCable(tag_id)
        self.chips.append(chip)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)
        os.symlink(chip.port, self.port)
        return chip

    def take_off(self) -> None:
        """Nothing on the cable: the port is there no more."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.port)

    def close(self) -> None:
        """Close every chip's pty."""
        self.take_off()
        for chip in self.chips:
            chip.close()


@contextlib.contextmanager
def counter_cable(directory: Path) -> Iterator[CounterCable]:
    """A CounterCable closed afterwards."""
    cable = CounterCable(directory)
    try:
        yield cable
    finally:
        cable.close()
