"""R13: the number guard's default policy, as a table of numbers tried.

Each row is a number as a caller id or keypad gave it, the queue's region, and what the
guard says. The table IS the documentation of what a callback may dial by default.
"""

from __future__ import annotations

import pytest

from ivr.domain.numbers import (
    DEFAULT_TYPES,
    NUMBER_TYPES,
    NumberGuard,
    compile_pattern,
    parse,
    parse_e164,
)

# raw number, region, stored E.164 (None: not a number at all), guard verdict
POLICY: list[tuple[str, str, str | None, str | None]] = [
    # Domestic US numbers in every form a carrier presents them: allowed.
    ("2015550123", "US", "+12015550123", None),
    ("12015550123", "US", "+12015550123", None),
    ("+12015550123", "US", "+12015550123", None),
    ("+1 (201) 555-0123", "US", "+12015550123", None),
    ("8005550123", "US", "+18005550123", None),  # toll free: free for us to call
    # International, whatever the spelling: refused (toll fraud is nearly always this).
    ("011447700900123", "US", "+447700900123", "invalid"),  # fictional UK drama range
    ("011442079460000", "US", "+442079460000", "international"),
    ("+442079460000", "US", "+442079460000", "international"),
    ("011882123456789", "US", "+882123456789", "invalid"),  # satellite / premium global
    ("+8821234567890", "US", "+8821234567890", "invalid"),
    # Premium rate.
    ("19005550123", "US", "+19005550123", "type: premium_rate"),
    ("9005550123", "US", "+19005550123", "type: premium_rate"),
    # Emergency and other short codes: never dialled back.
    ("911", "US", "+1911", "emergency"),
    ("112", "US", "+1112", "emergency"),
    ("411", "US", "+1411", "invalid"),
    ("999", "GB", "+44999", "emergency"),
    ("112", "GB", "+44112", "emergency"),
    ("118118", "GB", "+44118118", "invalid"),
    # Too short / not a real range.
    ("5551234", "US", "+15551234", "invalid"),
    ("0201", "US", "+10201", "invalid"),
    # Withheld: whatever the carrier wrote.
    ("anonymous", "US", None, "anonymous"),
    ("Restricted", "US", None, "anonymous"),
    ("", "US", None, "anonymous"),
    ("caller", "US", None, "anonymous"),
    ("12;user=phone", "US", None, "anonymous"),
    # GB: domestic forms allowed; premium rate and personal numbers refused.
    ("02079460000", "GB", "+442079460000", None),
    ("+442079460000", "GB", "+442079460000", None),
    ("00442079460000", "GB", "+442079460000", None),
    ("07700900123", "GB", "+447700900123", "invalid"),
    ("07400123456", "GB", "+447400123456", None),  # mobile
    ("09012345678", "GB", "+449012345678", "type: premium_rate"),
    ("08451234567", "GB", "+448451234567", "type: premium_rate"),  # 0845 "local rate"
    ("07011234567", "GB", "+447011234567", "type: personal_number"),
    ("+12015550123", "GB", "+12015550123", "international"),
]


@pytest.mark.parametrize(("raw", "region", "e164", "verdict"), POLICY)
def test_default_policy(raw: str, region: str, e164: str | None, verdict: str | None) -> None:
    num = parse(raw, region)
    assert (num.e164 if num is not None else None) == e164
    guard = NumberGuard(region)
    assert guard.check(num) == verdict
    # The stored form gives the same verdict when read back (parse once, store E.164).
    if num is not None:
        assert guard.check(num.e164) == verdict


def test_parse_once_forms() -> None:
    num = parse("(201) 555-0123", "US")
    assert num is not None
    assert (num.e164, num.digits, num.national, num.region, num.type) == (
        "+12015550123", "12015550123", "2015550123", "US", "fixed_line_or_mobile")
    gb = parse("020 7946 0000", "GB")
    assert gb is not None and gb.national == "02079460000" and gb.e164 == "+442079460000"
    assert parse_e164("+442079460000") == gb
    assert parse_e164("02079460000") is None  # stored numbers are E.164 or nothing


def test_widening_to_other_countries_is_explicit() -> None:
    """An operator serving Canada too lists it; premium stays refused everywhere."""
    guard = NumberGuard("US", regions=["US", "CA"])
    assert guard.check(parse("+16135550123", "US")) is None  # Ottawa
    assert guard.check(parse("+442079460000", "US")) == "international"
    assert guard.check(parse("19005550123", "US")) == "type: premium_rate"
    premium_ok = NumberGuard("US", types=[*DEFAULT_TYPES, "premium_rate"])
    assert premium_ok.check(parse("19005550123", "US")) is None


@pytest.mark.parametrize(
    ("pattern", "number", "matches"),
    [
        ("_NXXNXXXXXX", "+12015550123", True),  # national form 2015550123
        ("_1NXXNXXXXXX", "+12015550123", True),  # E.164 digits 12015550123
        ("_+1201.", "+12015550123", True),  # E.164
        ("_212.", "+12015550123", False),
        ("+12015550123", "+12015550123", True),  # exact
        ("2015550123", "+12015550123", True),
        ("re:^\\+1201", "+12015550123", True),
        ("re:555", "+12015550123", True),
        ("_[2-3]01!", "+12015550123", True),
        ("_020[7-8].", "+442079460000", True),  # GB national with trunk prefix
    ],
)
def test_patterns_match_any_spelling(pattern: str, number: str, matches: bool) -> None:
    num = parse_e164(number)
    assert num is not None
    region = num.region or "US"
    assert (NumberGuard(region, allowed=[pattern]).check(num) is None) is matches
    assert (NumberGuard(region, denied=[pattern]).check(num) is not None) is matches


def test_patterns_are_extra_rules_never_a_way_around() -> None:
    """An allow-everything pattern does not let international or premium through."""
    guard = NumberGuard("US", allowed=["_X.", "_+X."])
    assert guard.check(parse("+442079460000", "US")) == "international"
    assert guard.check(parse("19005550123", "US")) == "type: premium_rate"
    assert guard.check(parse("911", "US")) == "emergency"
    denied = NumberGuard("US", denied=["_201."])
    assert denied.check(parse("2015550123", "US")) == "denied: _201."


@pytest.mark.parametrize(
    "pattern", ["_[9", "_0-9", "_", "_[]", "_[9-0]", "_a1", "re:(", "12a", "", "_X.%"]
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="bad number pattern"):
        compile_pattern(pattern)


def test_bad_guard_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown region"):
        NumberGuard("XX")
    with pytest.raises(ValueError, match="unknown region"):
        NumberGuard("US", regions=["US", "ZZ"])
    with pytest.raises(ValueError, match="unknown number type"):
        NumberGuard("US", types=["premium"])
    assert set(DEFAULT_TYPES) <= set(NUMBER_TYPES)


def test_hostile_input_is_bounded() -> None:
    assert parse("1" * 5000, "US") is None
    long = parse("+" + "9" * 39, "US")
    assert long is None or not long.valid
    assert parse("\x00\xff", "US") is None
