"""Bike photos: an upload is decoded and re-encoded, so what we keep and serve is pixels and nothing else.

A file that only starts like an image (a PNG signature, then a web page) is refused; bytes hidden after a real
image, metadata (EXIF with a phone's location) and extra chunks are dropped by the re-encoding.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from PIL import Image, UnidentifiedImageError

from backend.registry import InvalidValue

# What the counter's camera produces, with room to spare; far fewer pixels than a decompression bomb.
MAX_PIXELS = 40_000_000
_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


def latest_url(bike: dict[str, Any]) -> str | None:
    """Where the bike's latest photo is served (GET /api/bikes/{id}/photos/{photo id}, under its access rules)."""
    return f"/api/bikes/{bike['bike_id']}/photos/{bike['photo_ids'][-1]}" if bike["photo_ids"] else None


def reencode(data: bytes) -> tuple[str, bytes]:
    """(content type, re-encoded bytes) of a JPEG or PNG upload; InvalidValue (field "photo") for anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or ""
                if kind not in _FORMATS:
                    raise InvalidValue("a photo must be a JPEG or PNG image", "photo", "photo_not_image")
                if image.width * image.height > MAX_PIXELS:
                    raise InvalidValue(
                        f"a photo may have at most {MAX_PIXELS} pixels",
                        "photo",
                        "photo_too_many_pixels",
                        {"n": MAX_PIXELS},
                    )
                image.load()
                out = io.BytesIO()
                if kind == "JPEG":
                    image.convert("RGB").save(out, format="JPEG", quality=90)
                else:
                    image.save(out, format="PNG")
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InvalidValue("a photo must be a JPEG or PNG image that can be read", "photo", "photo_not_image") from exc
    return _FORMATS[kind], out.getvalue()
