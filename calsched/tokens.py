"""Bearer tokens for the control API, derived from one daemon secret.

Nothing is stored per token: every token is an HMAC-SHA256 under the daemon's secret, so
the daemon recomputes and compares instead of keeping a token table, and rotating the
secret file revokes every token at once.

Formats (the HMAC part is unpadded URL-safe base64 of the 32-byte digest)::

    agent token   agent.<b64url(agent id, UTF-8)>.<b64url(HMAC(secret, b"agent:" + id))>
    admin token   admin.<b64url(HMAC(secret, b"admin"))>

The agent id travels in the clear inside its token (it is not secret) so the control API
can tell "a valid token of another agent" (403 ``forbidden``) from "a bad token"
(401 ``unauthorized``), as protocol section 2 asks; a bare HMAC could not say whose it is.
The ``agent:`` and ``admin`` prefixes separate the two domains: no agent id makes the
admin message, so no agent token doubles as the admin token.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from calsched._durable import fsync_dir
from calsched.errors import ConfigError, InvalidInputError
from calsched.model import MAX_ID_CHARS

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_BYTES",
    "admin_token",
    "agent_of_token",
    "agent_token",
    "load_or_create_secret",
    "verify_admin_token",
    "verify_agent_token",
]

#: Length of a secret made by :func:`load_or_create_secret`.
SECRET_BYTES = 32
#: Shorter secrets are refused: an HMAC key that short could be guessed.
MIN_SECRET_BYTES = 16

_AGENT_PREFIX = "agent."
_ADMIN_PREFIX = "admin."
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Decode unpadded base64url; ``None`` unless ``text`` is its one canonical form."""
    if not _B64URL.fullmatch(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Reject non-canonical spellings (stray low bits), so each token has a single form.
    return data if _b64(data) == text else None


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the control secret must be at least {MIN_SECRET_BYTES} bytes long "
            f"(it has {len(secret)})"
        )


def _mac(secret: bytes, message: bytes) -> bytes:
    _check_secret(secret)
    return hmac.new(secret, message, hashlib.sha256).digest()


def agent_token(secret: bytes, agent_id: str) -> str:
    """The token that lets one agent act on ``/v1/agents/<agent_id>/…`` only.

    ``agent.<b64url(agent_id)>.<b64url(HMAC-SHA256(secret, b"agent:" + agent_id))>``.
    Raises :class:`~calsched.errors.ConfigError` for a secret shorter than
    :data:`MIN_SECRET_BYTES` and :class:`~calsched.errors.InvalidInputError` for an id
    that is empty, longer than :data:`~calsched.model.MAX_ID_CHARS` (the protocol's
    limit) or not valid Unicode (a lone surrogate cannot be put in a token).
    """
    if not 1 <= len(agent_id) <= MAX_ID_CHARS:
        raise InvalidInputError("agent_id", f"must be 1 to {MAX_ID_CHARS} characters")
    try:
        raw_id = agent_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError("agent_id", "must be valid Unicode") from None
    return f"{_AGENT_PREFIX}{_b64(raw_id)}.{_b64(_mac(secret, b'agent:' + raw_id))}"


def admin_token(secret: bytes) -> str:
    """The token that may use every route: ``admin.<b64url(HMAC-SHA256(secret, b"admin"))>``."""
    return _ADMIN_PREFIX + _b64(_mac(secret, b"admin"))


def _same(expected: str, given: str) -> bool:
    # compare_digest on bytes: it refuses non-ASCII str, and a header may carry anything.
    return hmac.compare_digest(
        expected.encode("ascii"), given.encode("utf-8", errors="surrogatepass")
    )


def verify_agent_token(secret: bytes, agent_id: str, token: str) -> bool:
    """True if ``token`` is ``agent_id``'s agent token under ``secret`` (constant-time)."""
    try:
        expected = agent_token(secret, agent_id)
    except InvalidInputError:  # no token exists for such an id
        return False
    return _same(expected, token)


def verify_admin_token(secret: bytes, token: str) -> bool:
    """True if ``token`` is the admin token under ``secret`` (constant-time)."""
    return _same(admin_token(secret), token)


def agent_of_token(secret: bytes, token: str) -> str | None:
    """The agent id a valid agent token acts for, or ``None`` if it is not one."""
    if not token.startswith(_AGENT_PREFIX):
        return None
    encoded_id, _, _mac_part = token[len(_AGENT_PREFIX) :].partition(".")
    raw_id = _unb64(encoded_id)
    if raw_id is None:
        return None
    try:
        agent_id = raw_id.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # The whole token is recomputed and compared, so the id and the MAC are both checked.
    return agent_id if verify_agent_token(secret, agent_id, token) else None


def load_or_create_secret(path: Path) -> bytes:
    """The daemon secret kept at ``path``; made (32 random bytes, mode 0600) if missing.

    Creation is atomic and first-writer-wins: the bytes are written to a private temporary
    file beside ``path`` and hard-linked into place, so no reader ever sees a partial
    file and two daemons starting together end up with the same secret.

    Raises :class:`~calsched.errors.ConfigError` if the file is readable or writable by
    group or others (like ssh, a key others can read is not used), or is shorter than
    :data:`MIN_SECRET_BYTES`.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            # The umask can only take bits away; chmod makes the mode exact anyway.
            os.fchmod(handle.fileno(), 0o600)
            handle.write(secrets.token_bytes(SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        # Another process may have won the race: then its secret is the one to use.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # a crash cannot forget the secret we handed out
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    with path.open("rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the secret file {path} is open to group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        data = handle.read()
    if len(data) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the secret file {path} holds {len(data)} bytes, fewer than {MIN_SECRET_BYTES}; "
            "delete it to have a new one made (every token changes)"
        )
    return data
