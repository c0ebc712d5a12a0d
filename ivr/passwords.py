"""Console passwords: scrypt (``hashlib.scrypt``, a memory-hard standard KDF in the
standard library) in one self-describing string, ``scrypt$n$r$p$salt$hash`` (base64).

The config holds only such hashes (``ivr hash-password`` makes one); a plain password
given in the environment (``IVR_PASSWORD_<LOGIN>``, for containers) is hashed when the
config is loaded and never kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

#: cost: 16 MiB and ~50 ms per hash on these machines; fixed in each hash string, so
#: raising it later leaves existing hashes valid
N, R, P = 2**14, 8, 1
_SALT = 16
_LEN = 32
# Bounds on what a hash string may ask for: a config must not make a login use GBs.
_MAX_N = 2**20
_MAX_MEM = 128 * 1024 * 1024


class BadHash(ValueError):
    """Not a hash string this module made (or one asking for an absurd cost)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kdf(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_LEN,
                          maxmem=_MAX_MEM)


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(_SALT)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_kdf(password, salt, N, R, P))}"


def parse(hashed: str) -> tuple[int, int, int, bytes, bytes]:
    """The parts of a hash string; ``BadHash`` with the reason otherwise."""
    parts = hashed.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise BadHash("not an scrypt hash (make one with: ivr hash-password)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise BadHash("damaged scrypt hash (make one with: ivr hash-password)") from None
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise BadHash("scrypt cost out of range")
    if 128 * n * r * p > _MAX_MEM or len(salt) < 8 or len(digest) < 16:
        raise BadHash("scrypt parameters out of range")
    return n, r, p, salt, digest


def verify(password: str, hashed: str) -> bool:
    """Constant-time check. A damaged hash never matches (the loader refuses one)."""
    try:
        n, r, p, salt, digest = parse(hashed)
    except BadHash:
        return False
    got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                         maxmem=_MAX_MEM)
    return hmac.compare_digest(got, digest)


#: a hash of a random password: verified against when the login is unknown, so an
#: unknown login costs the same time as a known one (no user enumeration by timing)
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
