"""Who a person is and what a bike is called: resident ID numbers (GB 11643), mobile numbers, plates,
frame and motor numbers; normalised, validated, and masked for display."""

from __future__ import annotations

import re
from datetime import date

# GB 11643-1999: the weight of digit i (1-based) is 2^(18-i) mod 11; the check character maps (sum mod 11).
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_ID_SHAPE = re.compile(r"[1-9][0-9]{16}[0-9X]")
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_SERIAL = re.compile(r"[A-Z0-9][A-Z0-9-]{4,29}")
_PLATE_DOTS = str.maketrans({".": "·", "•": "·", "・": "·", "･": "·", "‧": "·"})


class IdentityError(ValueError):
    """A value that is not a valid resident ID, mobile, plate, frame or motor number; says why."""


def check_character(first17: str) -> str:
    """The GB 11643 check character ('0'-'9' or 'X') for the first 17 digits of a resident ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise IdentityError("the first 17 characters of a resident ID number are digits")
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def normalise_id_number(value: str) -> str:
    """A valid resident ID number in canonical form (upper-case X); raises IdentityError saying what is wrong."""
    text = value.strip().replace(" ", "").upper()
    if len(text) != 18:
        raise IdentityError(f"a resident ID number has 18 characters, not {len(text)}")
    if not _ID_SHAPE.fullmatch(text):
        raise IdentityError("a resident ID number is 17 digits and a check digit or X")
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        raise IdentityError("the birth date in the resident ID number is not a real date") from None
    if not date(1900, 1, 1) <= born <= date.today():
        raise IdentityError("the birth date in the resident ID number is out of range")
    if check_character(text[:17]) != text[17]:
        raise IdentityError("the check digit of the resident ID number does not match (mistyped?)")
    return text


def normalise_mobile(value: str) -> str:
    """An 11-digit mainland mobile number without spaces, dashes or +86; raises IdentityError."""
    text = re.sub(r"[\s-]", "", value)
    text = text.removeprefix("+86").removeprefix("0086")
    if not _MOBILE.fullmatch(text):
        raise IdentityError("a mobile number has 11 digits and starts with 13-19")
    return text


def normalise_plate(value: str, pattern: str, example: str) -> str:
    """A plate in canonical form if it matches the local pattern; raises IdentityError."""
    text = value.strip().upper().replace(" ", "").translate(_PLATE_DOTS)
    if not re.fullmatch(pattern, text):
        raise IdentityError(f"plate {text!r} does not match the local pattern (like {example})")
    return text


def normalise_serial(value: str, what: str) -> str:
    """A frame or motor number: 5-30 letters, digits or dashes, upper-cased; raises IdentityError."""
    text = value.strip().upper().replace(" ", "")
    if not _SERIAL.fullmatch(text):
        raise IdentityError(f"a {what} has 5-30 letters, digits or dashes")
    return text


def mask_id_number(id_number: str) -> str:
    """The last 4 characters of a resident ID number, the rest hidden.

    Showing the first 4 as well left only the birth date and two area digits hidden: a few thousand look-ups of
    candidates would find the number (issue 11 #5).
    """
    return "*" * (len(id_number) - 4) + id_number[-4:]


def mask_mobile(mobile: str) -> str:
    """A mobile number with its middle four digits hidden."""
    return mobile[:3] + "****" + mobile[7:] if len(mobile) == 11 else "*" * len(mobile)


def mask_name(name: str) -> str:
    """A name with all but its first character hidden, word by word for Latin names."""
    words = name.split()
    if len(words) > 1:
        return " ".join(w[0] + "*" * (len(w) - 1) for w in words)
    return name[:1] + "*" * max(len(name) - 1, 1)
