"""R13 number guard: Asterisk patterns, regexes, anonymous numbers, defaults."""

from __future__ import annotations

import pytest

from ivr.domain.numbers import (
    DEFAULT_ALLOWED,
    DEFAULT_DENIED,
    NumberGuard,
    compile_pattern,
    deny_foreign_e164,
    normalize,
)


def matches(pattern: str, number: str) -> bool:
    return NumberGuard([pattern], []).check(number) is None


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("_X.", ["12", "02079460000"], ["1", "+44"]),
        ("_NXXNXXXXXX", ["2125550123"], ["1125550123", "212555012", "21255501234"]),
        ("_0[1-9]X.", ["02079", "0190"], ["00441", "020"]),
        ("_00.", ["0044", "001"], ["00", "0144"]),
        ("_ZXX", ["100", "999"], ["099", "1000"]),
        ("_0[137]X", ["010", "039", "070"], ["020", "080"]),
        ("_0[1-35-7]X", ["010", "030", "050", "070"], ["040", "080"]),
        ("_07!", ["07", "0712345"], ["08"]),
        ("_+X.", ["+442079", "+12"], ["442079", "+1"]),
        ("_nxx", ["200"], ["100"]),  # letters are case-insensitive, as in Asterisk
        ("02079460000", ["02079460000"], ["020794600001", "0207946000"]),
        (r"re:^0[1-9]\d{8,9}$", ["02079460000", "0207946000"], ["0020794600", "+4420"]),
        ("re:^\\+(?!44)", ["+33123"], ["+44207", "0033"]),
    ],
)
def test_patterns(pattern: str, yes: list[str], no: list[str]) -> None:
    guard = NumberGuard([pattern], [], min_digits=1)
    for number in yes:
        assert guard.check(number) is None, (pattern, number)
    for number in no:
        assert guard.check(number) == "not allowed", (pattern, number)


@pytest.mark.parametrize("bad", ["_", "_0[1-", "_0[]", "_0[a-z]", "_0Y.", "re:(", "12a", ""])
def test_bad_patterns_name_themselves(bad: str) -> None:
    with pytest.raises(ValueError, match="bad number pattern"):
        compile_pattern(bad)


@pytest.mark.parametrize(
    "number",
    [None, "", "  ", "anonymous", "Anonymous", "unknown", "<unknown>", "RESTRICTED", "withheld"],
)
def test_anonymous_numbers_get_no_offer(number: str | None) -> None:
    assert NumberGuard([], []).check(number) == "anonymous"


@pytest.mark.parametrize("number", ["abc", "0207-x", "++44", "44+", "sip:alice@example"])
def test_non_numbers_are_invalid(number: str) -> None:
    assert NumberGuard([], []).check(number) == "invalid"


def test_digit_count_limits() -> None:
    guard = NumberGuard([], [], min_digits=6, max_digits=15)
    assert guard.check("12345") == "invalid"
    assert guard.check("123456") is None
    assert guard.check("+123456789012345") is None
    assert guard.check("1234567890123456") == "invalid"


def test_denied_wins_over_allowed_and_names_the_pattern() -> None:
    guard = NumberGuard(["_X."], ["_09.", "_00."])
    assert guard.check("09012345678") == "denied: _09."
    assert guard.check("0044207946") == "denied: _00."
    assert guard.check("02079460000") is None


def test_normalize() -> None:
    assert normalize("+44 (20) 7946-0000") == "+442079460000"
    assert normalize("020.7946.0000") == "02079460000"
    assert normalize("anonymous") is None
    assert normalize(None) is None


def test_defaults() -> None:
    guard = NumberGuard(DEFAULT_ALLOWED, DEFAULT_DENIED)
    # ordinary national numbers pass
    assert guard.check("02079460000") is None
    assert guard.check("2125550123") is None
    # international by prefix is denied
    assert guard.check("0033123456789") == "denied: _00."
    assert guard.check("01133123456789") == "denied: _011."
    # premium-rate examples
    assert guard.check("09012345678") == "denied: _09."
    assert guard.check("19005550123") == "denied: _1900NXXXXXX"
    # emergency and directory numbers are never dialled back
    assert guard.check("112") == "denied: 112"
    assert guard.check("999") == "denied: 999"
    assert guard.check("118118") == "denied: _118XXX"
    # E.164 is allowed by default: carriers present domestic callers that way too
    assert guard.check("+442079460000") is None


def test_deny_foreign_e164() -> None:
    guard = NumberGuard(DEFAULT_ALLOWED, [*DEFAULT_DENIED, deny_foreign_e164("44")])
    assert guard.check("+442079460000") is None
    assert guard.check("+33123456789") == "denied: re:^\\+(?!44)"
    with pytest.raises(ValueError):
        deny_foreign_e164("+44")
