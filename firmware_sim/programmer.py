"""The simulated chip on the programming cable used at fitting (hardware/programming-cable.md): a key goes into a
v2 chip, never out.

`ChipOnCable` is the chip's side: a pty pair whose master it serves from a thread, as a chip's serial pins would. The
counter's side (`Programmer`) and the framing are in protocol.programming_cable.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import tty
from types import TracebackType

from firmware_sim.tag_v2 import ChipMemory, TagV2
from protocol.beacon_v2 import key_check_value
from protocol.programming_cable import (
    FIRMWARE,
    INFO_STRUCT,
    WRITE_KEY_STRUCT,
    CableDecoder,
    CableFrame,
    Command,
    ErrorCode,
    ProgrammerError,
    encode_cable,
)


class ChipOnCable:
    """A blank v2 chip on the programming cable: answers INFO, takes one key (WRITE_KEY), tells its KEY_CHECK.

    No command reads the key back; the key is written once (a refit is a new chip, and the old key is retired).
    """

    def __init__(self, serial_number: int) -> None:
        self.serial_number = serial_number
        self._key: bytes | None = None
        self.clock_set_unix_s: float | None = None
        self.refused: list[ErrorCode] = []
        self._decoder = CableDecoder()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"chip {serial_number}", daemon=True)
        self._thread.start()

    def __enter__(self) -> ChipOnCable:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChipOnCable(serial={self.serial_number}, keyed={self.keyed})"

    @property
    def keyed(self) -> bool:
        """Whether a key was written."""
        return self._key is not None

    def tag(self, rng: random.Random, *, clock_offset_s: float = 0.0, drift_ppm: float = 0.0) -> TagV2:
        """The chip off the cable and beaconing: a TagV2 with the written key, its clock set when it was written
        (simulation time 0 is that moment)."""
        if self._key is None or self.clock_set_unix_s is None:
            raise ProgrammerError(f"chip {self.serial_number} has no key: it cannot beacon v2")
        return TagV2(
            self.serial_number,
            self._key,
            rng,
            epoch_unix_s=self.clock_set_unix_s,
            clock_offset_s=clock_offset_s,
            drift_ppm=drift_ppm,
        )

    def memory(self) -> ChipMemory:
        """The chip's key and clock as the simulation carries it onto a bike (firmware_sim.tag_v2.ChipMemory)."""
        if self._key is None or self.clock_set_unix_s is None:
            raise ProgrammerError(f"chip {self.serial_number} has no key: it cannot beacon v2")
        return ChipMemory(self.serial_number, self._key, self.clock_set_unix_s)

    def _serve(self) -> None:
        while not self._stop.wait(0.002):
            try:
                data = os.read(self._master, 256)
            except BlockingIOError:
                continue
            except OSError:
                return
            broken = self._broken_frames()
            for frame in self._decoder.feed(data):
                self._send(self._answer(frame))
            if self._broken_frames() > broken:
                # A host waiting for a reply to a frame garbled on the way learns so at once instead of timing out.
                self._send(self._error(ErrorCode.BAD_FRAME))

    def _broken_frames(self) -> int:
        return self._decoder.rejected["crc"] + self._decoder.rejected["bad_length"]

    def _send(self, frame: CableFrame) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, encode_cable(frame))

    def _error(self, code: ErrorCode) -> CableFrame:
        self.refused.append(code)
        return CableFrame(Command.ERROR, bytes([code]))

    def _answer(self, frame: CableFrame) -> CableFrame:
        reply = frame.command | 0x80
        if frame.command == Command.INFO:
            if frame.data:
                return self._error(ErrorCode.BAD_LENGTH)
            return CableFrame(reply, INFO_STRUCT.pack(self.serial_number, int(self.keyed), FIRMWARE))
        if frame.command == Command.WRITE_KEY:
            if len(frame.data) != WRITE_KEY_STRUCT.size:
                return self._error(ErrorCode.BAD_LENGTH)
            if self._key is not None:
                return self._error(ErrorCode.ALREADY_KEYED)
            key, unix_s = WRITE_KEY_STRUCT.unpack(frame.data)
            self._key, self.clock_set_unix_s = key, float(unix_s)
            return CableFrame(reply, key_check_value(key))
        if frame.command == Command.KEY_CHECK:
            if frame.data:
                return self._error(ErrorCode.BAD_LENGTH)
            if self._key is None:
                return self._error(ErrorCode.NO_KEY)
            return CableFrame(reply, key_check_value(self._key))
        return self._error(ErrorCode.UNKNOWN_COMMAND)

    def close(self) -> None:
        """Stop serving and close the pty."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
