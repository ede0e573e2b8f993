"""Keeping secrets out of job specs.

A job's environment is stored with the job, shown by ``sgctl``, logged and sent to a partner's
site, so a secret there leaks. :func:`check_env_secrets` refuses values that look like secrets
and asks for a reference, ``secret://<store>/<path>``, which the site resolves at run time.

A value looks like a secret when its variable's name suggests one (``DB_PASSWORD``,
``HF_TOKEN``, ``OPENAI_API_KEY``) and the value is not plainly harmless (empty, a boolean, a
number of up to six digits, a file path); or when the value itself has the shape of a
well-known credential (an AWS access key id, a PEM private key, a GitHub, Slack or OpenAI-style
key, a JWT, one of our own tokens, a URL with a password in it), whatever the name.
The value is never quoted in the error.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Final

from orchestrator.errors import InvalidSpecError

__all__ = ["SECRET_REFERENCE_PREFIX", "check_env_secrets", "check_secret_reference"]

SECRET_REFERENCE_PREFIX: Final = "secret://"  # noqa: S105 (a URL scheme, not a secret)

_HOW = f"pass a reference instead: {SECRET_REFERENCE_PREFIX}<store>/<path>"

# Markers in a variable's name. TOKEN followed by S or IZER is a count or a tokenizer setting
# (MAX_NEW_TOKENS, TOKENIZERS_PARALLELISM), not a credential.
_SECRET_NAME_RE = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN(?!S|IZ)|API_?KEY|PRIVATE_KEY|ACCESS_KEY|CREDENTIAL",
    re.IGNORECASE,
)
# Values harmless under any name: booleans and switches, small numbers (MAX_TOKEN_LENGTH=2048),
# and file paths (where a credential file is, not what is in it).
_HARMLESS_RE = re.compile(
    r"(?:true|false|yes|no|on|off|none|null)"
    r"|[0-9]{1,6}(?:\.[0-9]{1,6})?"
    r"|(?:/|\./|\.\./|~/)[^\s:]*",
    re.IGNORECASE,
)

#: (what it looks like, pattern) for values that are credentials whatever the variable's name.
_SECRET_VALUE_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a PEM private key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")),
    ("a GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_\w{22,}")),
    ("a Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("a JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")),
    ("an orchestrator token", re.compile(r"\bsg1\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("an API secret key (sk-...)", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
    (
        "a URL with a password in it",
        re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@"),
    ),
)

_STORE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MAX_REFERENCE = 1024


def check_secret_reference(field: str, value: str) -> None:
    """Raise ``InvalidSpecError(field, ...)`` unless ``value`` is a well-formed reference,
    ``secret://<store>/<path>``: a store name, then a non-empty path of non-empty segments
    (no ``.`` or ``..``), without whitespace or control characters."""
    if not value.startswith(SECRET_REFERENCE_PREFIX):
        raise InvalidSpecError(field, f"a secret reference starts with {SECRET_REFERENCE_PREFIX}")
    if len(value) > _MAX_REFERENCE:
        raise InvalidSpecError(field, f"secret reference longer than {_MAX_REFERENCE} characters")
    for ch in value:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf"):
            raise InvalidSpecError(
                field, f"secret reference contains whitespace or control character U+{ord(ch):04X}"
            )
    store, sep, path = value.removeprefix(SECRET_REFERENCE_PREFIX).partition("/")
    if not _STORE_RE.fullmatch(store):
        raise InvalidSpecError(
            field, f"secret reference needs a store name: {SECRET_REFERENCE_PREFIX}<store>/<path>"
        )
    if not sep or not path:
        raise InvalidSpecError(
            field, f"secret reference needs a path: {SECRET_REFERENCE_PREFIX}{store}/<path>"
        )
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise InvalidSpecError(field, "secret reference path has an empty, '.' or '..' segment")


def _looks_like(key: str, value: str) -> str | None:
    """Why ``value`` of variable ``key`` looks like a secret, or None."""
    for what, pattern in _SECRET_VALUE_PATTERNS:
        if pattern.search(value):
            return f"the value looks like {what}"
    if value and _SECRET_NAME_RE.search(key) and not _HARMLESS_RE.fullmatch(value):
        return "the variable's name suggests a secret"
    return None


def check_env_secrets(env: Mapping[str, str], *, field: str = "env") -> None:
    """Raise ``InvalidSpecError(f"{field}.{key}", ...)`` for the first variable whose value
    looks like a secret (see the module docstring) or is a malformed ``secret://`` reference.
    The error never quotes the value."""
    for key, value in env.items():
        where = f"{field}.{key}"
        if value.startswith(SECRET_REFERENCE_PREFIX):
            check_secret_reference(where, value)
            continue
        why = _looks_like(key, value)
        if why is not None:
            raise InvalidSpecError(where, f"looks like a secret ({why}); {_HOW}")
