"""Resident ID numbers (GB 11643), mobiles, plates and masking; the vault's encryption and keyed hash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.identity import (
    IdentityError,
    check_character,
    mask_id_number,
    mask_mobile,
    mask_name,
    normalise_id_number,
    normalise_mobile,
    normalise_plate,
)
from backend.settings import BackendSettings
from backend.vault import Vault, VaultError
from protocol.signing import generate_signing_key

PLATES = BackendSettings.model_fields["plate_pattern"].default


@pytest.mark.parametrize("number", ["11010519491231002X", "110105194912310038", "440524198001010013"])
def test_valid_id_numbers_pass_including_the_x_check_character(number: str) -> None:
    assert normalise_id_number(number) == number


def test_lower_case_x_and_spaces_are_normalised() -> None:
    assert normalise_id_number(" 110105 19491231 002x ") == "11010519491231002X"


@pytest.mark.parametrize(
    "number, reason",
    [
        ("110105194912310021", "check digit"),  # one digit off
        ("110105194912310020", "check digit"),  # X expected
        ("11010519491231002", "18 characters"),
        ("1101051949123100X2", "17 digits"),  # X only at the end
        ("010105194912310021", "17 digits"),  # no region starts with 0
        ("110105194902300027", "not a real date"),  # 30 February
        ("110105290001010010", "out of range"),  # born in the future
    ],
)
def test_invalid_id_numbers_are_refused_saying_why(number: str, reason: str) -> None:
    with pytest.raises(IdentityError, match=reason):
        normalise_id_number(number)


@given(
    st.dates(min_value=__import__("datetime").date(1900, 1, 1), max_value=__import__("datetime").date(2020, 1, 1)),
    st.integers(110000, 829999),
    st.integers(0, 999),
)
def test_check_character_makes_every_number_valid_and_any_other_character_invalid(born, region, seq) -> None:  # type: ignore[no-untyped-def]
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    check = check_character(first17)
    assert normalise_id_number(first17 + check) == first17 + check
    for wrong in "0123456789X".replace(check, ""):
        with pytest.raises(IdentityError):
            normalise_id_number(first17 + wrong)


def test_mobiles_are_normalised_and_checked() -> None:
    assert normalise_mobile("+86 138-0013-8000") == "13800138000"
    for bad in ("12800138000", "1380013800", "phone"):
        with pytest.raises(IdentityError):
            normalise_mobile(bad)


def test_plates_follow_the_configured_local_pattern() -> None:
    assert normalise_plate(" hz-12345 ", PLATES, "HZ-12345") == "HZ-12345"
    assert normalise_plate("浙A.12345", PLATES, "HZ-12345") == "浙A·12345"
    with pytest.raises(IdentityError, match="like HZ-12345"):
        normalise_plate("HZ-1234", PLATES, "HZ-12345")
    assert normalise_plate("SZ 888", r"^SZ[0-9]{3}$", "SZ123") == "SZ888"


def test_masking_hides_the_middle() -> None:
    assert mask_id_number("11010519491231002X") == "**************002X"
    assert mask_mobile("13800138000") == "138****8000"
    assert mask_name("王小明") == "王**" and mask_name("Wang Fang") == "W*** F***"


def test_vault_round_trip_hides_the_number_and_hashes_by_key() -> None:
    a, b = Vault("key one " * 4, "lookup one " * 4), Vault("key two " * 4, "lookup two " * 4)
    blob = a.encrypt("11010519491231002X")
    assert b"11010519491231002X" not in blob and a.encrypt("11010519491231002X") != blob  # random nonce
    assert a.decrypt(blob) == "11010519491231002X"
    with pytest.raises(VaultError):
        b.decrypt(blob)
    assert a.lookup_hash("11010519491231002X") == a.lookup_hash("11010519491231002X")
    assert a.lookup_hash("11010519491231002X") != b.lookup_hash("11010519491231002X")


def test_default_secrets_are_refused_outside_development() -> None:
    with pytest.raises(ValueError, match="BIKEGUARD_ID_ENCRYPTION_KEY"):
        BackendSettings(database_url="postgresql://x", environment="production")
    strong = {k: f"{k}-" + "x" * 40 for k in ("id_encryption_key", "id_lookup_key", "certificate_signing_key")}
    strong["public_base_url"] = "https://bikes.example.gov"
    strong["hotlist_signing_key"] = generate_signing_key()
    settings = BackendSettings(database_url="postgresql://x", environment="production", **strong)
    assert settings.secure_cookies is True
    assert BackendSettings(database_url="postgresql://x", **strong).environment == "production"
