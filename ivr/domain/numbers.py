"""Number guard against toll fraud (SPEC R13).

A callback makes *us* pay for a call to a number a stranger chose, so the number must be
a real phone number, match the queue's allowed patterns, and match no denied pattern.

Patterns are Asterisk dialplan patterns (``_`` prefix) or regexes (``re:`` prefix);
anything else is an exact number.

Asterisk pattern syntax (as in extensions.conf):
    X = 0-9, Z = 1-9, N = 2-9, [15-7] = a character class of digits and ranges,
    ``.`` = one or more characters, ``!`` = zero or more characters.
    Digits, ``+``, ``*`` and ``#`` are literals. Letters X/Z/N are case-insensitive.
    The whole number must match (Asterisk matches whole extensions too).
``re:<regex>`` is searched (``re.search``) in the normalised number: write ``^...$``
to anchor, as the examples do.

Numbers are normalised before matching: spaces, dashes, dots and parentheses removed;
what is left must be digits with an optional leading ``+``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# What Asterisk / SIP peers put in the caller id when the number is withheld:
# RFC 3325 privacy gives "anonymous", carriers use the others; Asterisk's own
# placeholder for an unset caller id is "<unknown>".
ANONYMOUS_NAMES: frozenset[str] = frozenset(
    {
        "",
        "anonymous",
        "unknown",
        "<unknown>",
        "restricted",
        "withheld",
        "private",
        "unavailable",
        "blocked",
        "none",
    }
)

# International prefixes: 00 (ITU, most of the world) and 011 (North America).
DENY_INTERNATIONAL: tuple[str, ...] = ("_00.", "_011.")

# Never dial emergency or directory services back.
DENY_SPECIAL: tuple[str, ...] = ("112", "911", "999", "000", "_118XXX")

# Premium-rate EXAMPLES, not an exhaustive list: review them for your country (a 09
# prefix is premium in the UK but ordinary in, say, Finland).
DENY_PREMIUM_EXAMPLES: tuple[str, ...] = (
    "_09.",  # UK premium rate (09xx); also 0900 in DE/NL/CH
    "_087[0-3].",  # UK service numbers 0870-0873
    "_1900NXXXXXX",  # NANP 900 premium (with trunk prefix 1)
    "_900NXXXXXX",  # NANP 900 premium (10 digits)
    "_1976NXXXXXX",  # NANP 976 premium (legacy)
    "_0137.",  # DE televoting
    "_089.",  # FR premium 089x
)

# Default for config: international + emergency/directory + premium examples. E.164
# numbers ("+44...") are NOT denied by default because carriers present domestic
# callers in E.164 too; use deny_foreign_e164("44") to deny every other country code.
DEFAULT_DENIED: tuple[str, ...] = DENY_INTERNATIONAL + DENY_SPECIAL + DENY_PREMIUM_EXAMPLES

# Default allowed: any digit string, with or without a leading +.
DEFAULT_ALLOWED: tuple[str, ...] = ("_X.", "_+X.")

_SEPARATORS = re.compile(r"[\s\-.()]")
_NUMBER = re.compile(r"\+?[0-9]+")


def normalize(number: str | None) -> str | None:
    """Canonical form used for matching and dedupe, or None if not a phone number."""
    if number is None:
        return None
    cleaned = _SEPARATORS.sub("", number)
    if not _NUMBER.fullmatch(cleaned):
        return None
    return cleaned


def deny_foreign_e164(home_country_code: str) -> str:
    """A ``re:`` pattern denying E.164 numbers outside the home country code."""
    if not home_country_code.isdigit():
        raise ValueError("country code must be digits")
    return f"re:^\\+(?!{home_country_code})"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile one pattern to a regex; ValueError naming the pattern if malformed."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"bad number pattern {pattern!r}: {exc}") from None
    if not pattern.startswith("_"):
        if normalize(pattern) != pattern:
            raise ValueError(f"bad number pattern {pattern!r}: not a number")
        return re.compile(re.escape(pattern) + r"\Z")
    out: list[str] = []
    body = pattern[1:]
    if not body:
        raise ValueError(f"bad number pattern {pattern!r}: empty")
    i = 0
    while i < len(body):
        c = body[i]
        upper = c.upper()
        if upper == "X":
            out.append("[0-9]")
        elif upper == "Z":
            out.append("[1-9]")
        elif upper == "N":
            out.append("[2-9]")
        elif c == ".":
            out.append(".+")
        elif c == "!":
            out.append(".*")
        elif c == "[":
            end = body.find("]", i + 1)
            if end < 0:
                raise ValueError(f"bad number pattern {pattern!r}: unterminated [")
            content = body[i + 1 : end]
            if not content or not re.fullmatch(r"[0-9]([0-9]|-[0-9])*", content):
                raise ValueError(f"bad number pattern {pattern!r}: bad class [{content}]")
            out.append(f"[{content}]")
            i = end
        elif c.isdigit() or c in "+*#":
            out.append(re.escape(c))
        else:
            raise ValueError(f"bad number pattern {pattern!r}: unexpected {c!r}")
        i += 1
    return re.compile("".join(out) + r"\Z")


class NumberGuard:
    """R13 for one queue. ``allowed`` empty means no allow-list (only ``denied`` and
    the validity checks apply)."""

    def __init__(
        self,
        allowed: Sequence[str],
        denied: Sequence[str],
        *,
        min_digits: int = 3,
        max_digits: int = 20,
    ) -> None:
        self._allowed = [(p, compile_pattern(p)) for p in allowed]
        self._denied = [(p, compile_pattern(p)) for p in denied]
        self._min = min_digits
        self._max = max_digits

    def check(self, number: str | None) -> str | None:
        """None if a callback to ``number`` may be offered, else the reason:
        "anonymous", "invalid", "denied: <pattern>" or "not allowed"."""
        if number is None or number.strip().lower() in ANONYMOUS_NAMES:
            return "anonymous"
        norm = normalize(number)
        if norm is None:
            return "invalid"
        digits = len(norm) - norm.startswith("+")
        if not self._min <= digits <= self._max:
            return "invalid"
        for text, regex in self._denied:
            if _matches(regex, text, norm):
                return f"denied: {text}"
        if self._allowed and not any(_matches(r, t, norm) for t, r in self._allowed):
            return "not allowed"
        return None


def _matches(regex: re.Pattern[str], text: str, number: str) -> bool:
    if text.startswith("re:"):
        return regex.search(number) is not None
    return regex.match(number) is not None
