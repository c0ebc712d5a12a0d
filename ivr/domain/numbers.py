"""Phone numbers: parsed once, stored in E.164, and the number guard (SPEC R13).

A callback makes *us* pay for a call to a number a stranger chose: a caller id is
trivially spoofed, and press 2 lets anyone type any number. So a callback is offered
only for a number that libphonenumber (the ``phonenumbers`` package, Google's metadata
for every country's numbering plan, updated with each release) says is a valid number of
the queue's region, of an ordinary type (fixed line, mobile, toll free, VoIP, UAN).
Everything else is refused by default: international numbers, premium rate, shared
cost, personal numbers, emergency and other short codes, invalid and withheld numbers.

A number is parsed once, where it enters (the caller id at arrival, the digits of a
press-2 entry, the API), in the queue's region, and stored in E.164
(``+12015550123``). Everything after that reads the stored form.

Operators' ``allowed_numbers`` / ``denied_numbers`` are extra rules on top of that
policy, never a way around it. A pattern is an Asterisk dialplan pattern (``_`` prefix),
a regex (``re:`` prefix) or an exact number, and it is tried against three spellings of
the number, so it can be written the way the operator thinks of it:
``+12015550123`` (E.164), ``12015550123`` (E.164 without the plus) and ``2015550123``
(national: as dialled inside the country, with its trunk prefix where it has one,
e.g. ``02079460000`` in GB).

Asterisk pattern syntax (as in extensions.conf):
    X = 0-9, Z = 1-9, N = 2-9, [15-7] = a character class of digits and ranges,
    ``.`` = one or more characters, ``!`` = zero or more characters.
    Digits, ``+``, ``*`` and ``#`` are literals. Letters X/Z/N are case-insensitive.
    The whole number must match (Asterisk matches whole extensions too).
``re:<regex>`` is searched (``re.search``): write ``^...$`` to anchor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType, shortnumberinfo

# What SIP peers put in the caller id when the number is withheld: RFC 3325 privacy
# gives "anonymous", carriers use the others; Asterisk's placeholder is "<unknown>".
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

# libphonenumber's number types, by the names config uses.
NUMBER_TYPES: dict[str, int] = {
    "fixed_line": PhoneNumberType.FIXED_LINE,
    "mobile": PhoneNumberType.MOBILE,
    "fixed_line_or_mobile": PhoneNumberType.FIXED_LINE_OR_MOBILE,
    "toll_free": PhoneNumberType.TOLL_FREE,
    "premium_rate": PhoneNumberType.PREMIUM_RATE,
    "shared_cost": PhoneNumberType.SHARED_COST,
    "voip": PhoneNumberType.VOIP,
    "personal_number": PhoneNumberType.PERSONAL_NUMBER,
    "pager": PhoneNumberType.PAGER,
    "uan": PhoneNumberType.UAN,
    "voicemail": PhoneNumberType.VOICEMAIL,
}
_TYPE_NAMES = {v: k for k, v in NUMBER_TYPES.items()}

# Types a callback may dial by default: ordinary subscriber numbers. Premium rate,
# shared cost, personal numbers (UK 070: a classic fraud vector), pagers and voicemail
# access numbers are not; an operator can widen this per queue (``number_types``).
DEFAULT_TYPES: tuple[str, ...] = (
    "fixed_line",
    "mobile",
    "fixed_line_or_mobile",
    "toll_free",
    "voip",
    "uan",
)

# Longest E.164 number is 15 digits; anything longer is not a phone number. Bounding the
# input also bounds what libphonenumber's regexes chew on.
MAX_INPUT = 40
_PRESENTABLE = re.compile(r"[0-9+()\-.\s]{1,40}")


def known_region(region: str) -> bool:
    """An ISO 3166-1 alpha-2 code libphonenumber has a numbering plan for."""
    return region in phonenumbers.SUPPORTED_REGIONS


@dataclass(frozen=True)
class PhoneNumber:
    """A number as parsed in a region. ``e164`` is what is stored and dialled."""

    e164: str
    national: str
    """Digits as dialled inside the number's country (trunk prefix included)."""
    region: str | None
    """ISO code of the country the number belongs to (None when invalid)."""
    valid: bool
    type: str
    """One of ``NUMBER_TYPES`` or ``"unknown"``."""

    @property
    def digits(self) -> str:
        """E.164 without the plus."""
        return self.e164[1:]


def parse(raw: str | None, region: str) -> PhoneNumber | None:
    """Parse what a caller id, a keypad or a form gave us, in ``region``. None when
    withheld or not a phone number at all; a parsed but invalid number comes back with
    ``valid=False`` (so it can be shown and refused with a reason)."""
    if raw is None:
        return None
    text = raw.strip()
    if text.lower() in ANONYMOUS_NAMES or not _PRESENTABLE.fullmatch(text):
        return None
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return _describe(num)


def parse_e164(e164: str) -> PhoneNumber | None:
    """Re-read a stored number."""
    if not e164.startswith("+"):
        return None
    return parse(e164, "ZZ")


def _describe(num: phonenumbers.PhoneNumber) -> PhoneNumber:
    e164 = phonenumbers.format_number(num, PhoneNumberFormat.E164)
    valid = phonenumbers.is_valid_number(num)
    national = re.sub(r"\D", "", phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL))
    return PhoneNumber(
        e164=e164,
        national=national or phonenumbers.national_significant_number(num),
        region=phonenumbers.region_code_for_number(num) if valid else None,
        valid=valid,
        type=_TYPE_NAMES.get(phonenumbers.number_type(num), "unknown") if valid else "unknown",
    )


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile one pattern to a regex; ValueError naming the pattern if malformed.
    Config calls this too, so check-config rejects exactly what the guard could not use."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"bad number pattern {pattern!r}: {exc}") from None
    if not pattern.startswith("_"):
        if not re.fullmatch(r"\+?[0-9]{1,20}", pattern):
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
            for lo, hi in re.findall(r"([0-9])-([0-9])", content):
                if lo > hi:
                    raise ValueError(f"bad number pattern {pattern!r}: bad range {lo}-{hi}")
            out.append(f"[{content}]")
            i = end
        elif c.isdigit() or c in "+*#":
            out.append(re.escape(c))
        else:
            raise ValueError(f"bad number pattern {pattern!r}: unexpected {c!r}")
        i += 1
    return re.compile("".join(out) + r"\Z")


class NumberGuard:
    """R13 for one queue.

    ``region``: the queue's country; ``regions``: countries a callback may go to
    (default: ``region`` only). ``types``: number types allowed (``DEFAULT_TYPES``).
    ``allowed`` (empty: no allow-list) and ``denied``: patterns on top.
    """

    def __init__(
        self,
        region: str,
        *,
        regions: Sequence[str] = (),
        types: Sequence[str] = DEFAULT_TYPES,
        allowed: Sequence[str] = (),
        denied: Sequence[str] = (),
    ) -> None:
        for r in (region, *regions):
            if not known_region(r):
                raise ValueError(f"unknown region {r!r} (use an ISO 3166 code such as US, GB)")
        for t in types:
            if t not in NUMBER_TYPES:
                raise ValueError(f"unknown number type {t!r} (known: {', '.join(NUMBER_TYPES)})")
        self.region = region
        self._regions = frozenset(regions or (region,))
        self._types = frozenset(types)
        self._allowed = [(p, compile_pattern(p)) for p in allowed]
        self._denied = [(p, compile_pattern(p)) for p in denied]

    def parse(self, raw: str | None) -> PhoneNumber | None:
        """A raw number (caller id, keypad digits) in this queue's region."""
        return parse(raw, self.region)

    def check(self, number: str | PhoneNumber | None) -> str | None:
        """None if a callback to ``number`` (E.164 as stored, or parsed) may be offered
        and dialled, else the reason: "anonymous", "emergency", "invalid",
        "international", "type: <type>", "denied: <pattern>" or "not allowed"."""
        num = parse_e164(number) if isinstance(number, str) else number
        if num is None:
            return "anonymous"
        if not num.valid:
            if _is_emergency(num):
                return "emergency"
            return "invalid"
        if num.region not in self._regions:
            return "international"
        if num.type not in self._types:
            return f"type: {num.type}"
        forms = (num.e164, num.digits, num.national)
        for text, regex in self._denied:
            if any(_matches(regex, text, f) for f in forms):
                return f"denied: {text}"
        if self._allowed and not any(
            _matches(r, t, f) for t, r in self._allowed for f in forms
        ):
            return "not allowed"
        return None


def _is_emergency(num: PhoneNumber) -> bool:
    try:
        parsed = phonenumbers.parse(num.e164, None)
    except phonenumbers.NumberParseException:
        return False
    for region in phonenumbers.region_codes_for_country_code(parsed.country_code or 0):
        if shortnumberinfo.is_emergency_number(num.national, region):
            return True
    return False


def _matches(regex: re.Pattern[str], text: str, number: str) -> bool:
    if text.startswith("re:"):
        return regex.search(number) is not None
    return regex.match(number) is not None
