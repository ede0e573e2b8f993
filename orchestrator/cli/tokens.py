"""``sgctl tokens``: make the signing keys, issue bearer tokens, and look inside one."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from orchestrator.errors import InvalidSpecError, UnauthenticatedError
from orchestrator.security.tokens import (
    ALL_SCOPES,
    DEFAULT_AUDIENCE,
    DEFAULT_SCOPES,
    MAX_TTL_SECONDS,
    SIGNING_KEY_FILE,
    Kind,
    TokenSigner,
    decode_unverified,
    key_id,
    write_key_pair,
)

__all__ = ["COMMANDS", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"([0-9]{1,9})([smhd]?)")


def parse_duration(text: str) -> int:
    """Seconds in ``90m``, ``24h``, ``3600s``, ``30d`` or ``3600`` (seconds); ValueError else."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 90m, 24h, 3600s or 30d")
    return int(m[1]) * _UNITS[m[2] or "s"]


def _ttl(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """The --ttl option in seconds (1 s to 400 days), or exit 2 naming it."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    if not 1 <= seconds <= MAX_TTL_SECONDS:
        raise click.BadParameter(f"{value!r} is not from 1s to 400d", ctx, param)
    return seconds


def _state_dir() -> Path:
    """``sgctl --state-dir`` when given, else ``$SG_STATE_DIR``, else ``.sg``."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    given = root.params.get("state_dir") if root is not None else None
    if isinstance(given, Path):
        return given
    return Path(os.environ.get("SG_STATE_DIR", ".sg"))


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(seconds: float) -> str:
    """``29d 23h``, ``1h 30m``, ``45s``: the two largest units."""
    s = abs(int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    parts: list[str] = []
    for unit, size in units:
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
        if len(parts) == 2 or (parts and s == 0):
            break
    return " ".join(parts)


@click.group("tokens")
def tokens() -> None:
    """Bearer tokens for the API: signing keys, issuing, inspecting.

    \b
    Every API call carries a token (metadata "authorization: Bearer <token>"),
    signed with the control plane's Ed25519 key. Keep token-signing.pem secret;
    token-verify.pem is what the API server checks signatures with.

    \b
    Examples:
      sgctl tokens keygen
      export SG_TOKEN=$(sgctl tokens issue --operator --subject root --ttl 8h)
      sgctl tokens issue --tenant acme --subject alice --scope jobs:read --ttl 30d
      sgctl tokens issue --partner narvik-jv --subject ops --ttl 90d
      sgctl tokens inspect "$SG_TOKEN"
    """


@tokens.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the keys. [default: <state dir>/auth]",
)
@click.option("--force", is_flag=True, help="Replace an existing key (every token issued dies).")
def keygen(directory: Path | None, force: bool) -> None:
    """Make the token signing key pair, unless it exists.

    \b
    Writes token-signing.pem (mode 0600: keep it secret) and token-verify.pem.
    An existing key is kept, so running it twice is safe; --force replaces it,
    which makes every token issued so far invalid.

    \b
    Examples:
      sgctl tokens keygen
      sgctl tokens keygen --dir /etc/sovereign-grid/auth
    """
    d = directory if directory is not None else _state_dir() / "auth"
    existed = (d / SIGNING_KEY_FILE).exists()
    signing, verify = write_key_pair(d, force=force)
    kid = key_id(TokenSigner.from_file(signing).public_key)
    verb = "kept existing" if existed and not force else "wrote new"
    click.echo(f"{verb} signing key {signing} (kid {kid})", err=True)
    click.echo(str(signing))
    click.echo(str(verify))


@tokens.command()
@click.option("--operator", "as_operator", is_flag=True, help="A token for an operator.")
@click.option("--tenant", metavar="TENANT", help="A token for a tenant's users.")
@click.option("--partner", metavar="PARTNER", help="A token for a partner that owns sites.")
@click.option(
    "--subject",
    metavar="NAME",
    default="cli",
    show_default=True,
    help="Who holds the token; logs show e.g. tenant:acme/alice.",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="SCOPE",
    help="Allow only this scope (repeat for more). [default: all of the kind's scopes]",
)
@click.option(
    "--ttl",
    metavar="DURATION",
    default="24h",
    callback=_ttl,
    show_default=True,
    help="Lifetime: 90m, 24h, 3600s, 30d (1s to 400d).",
)
@click.option("--audience", default=DEFAULT_AUDIENCE, show_default=True, help="Audience claim.")
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Private key to sign with. [default: <state dir>/auth/{SIGNING_KEY_FILE}]",
)
def issue(
    as_operator: bool,
    tenant: str | None,
    partner: str | None,
    subject: str,
    scopes: tuple[str, ...],
    ttl: int,
    audience: str,
    signing_key: Path | None,
) -> None:
    """Issue a token; prints only the token on stdout (details on stderr).

    \b
    Scopes by kind (a token may carry fewer, never more):
      operator  all scopes
      tenant    jobs:submit jobs:read jobs:cancel sites:read tenants:read
      partner   sites:read federation:manage usage:read

    \b
    Examples:
      sgctl tokens issue --operator --subject root --ttl 8h
      sgctl tokens issue --tenant acme --subject alice --ttl 30d
      sgctl tokens issue --tenant acme --subject dashboard --scope jobs:read
      sgctl tokens issue --partner narvik-jv --subject ops --ttl 90d
    """
    chosen = [k for k, v in ((Kind.OPERATOR, as_operator), (Kind.TENANT, tenant),
                             (Kind.PARTNER, partner)) if v]  # fmt: skip
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --operator, --tenant T or --partner P")
    kind = chosen[0]
    for scope in scopes:
        if scope not in ALL_SCOPES:
            known = ", ".join(sorted(ALL_SCOPES))
            raise click.BadParameter(
                f"unknown scope {scope!r} (one of {known})", param_hint="--scope"
            )
        if scope not in DEFAULT_SCOPES[kind]:
            allowed = ", ".join(sorted(DEFAULT_SCOPES[kind]))
            raise click.BadParameter(
                f"{scope!r} is beyond what a {kind} token allows ({allowed})", param_hint="--scope"
            )
    key_path = signing_key if signing_key is not None else _state_dir() / "auth" / SIGNING_KEY_FILE
    if not key_path.is_file():
        raise click.BadParameter(
            f"no signing key at {key_path} (make one with: sgctl tokens keygen)",
            param_hint="--signing-key",
        )
    try:
        signer = TokenSigner.from_file(key_path)
    except InvalidSpecError as exc:
        raise click.BadParameter(exc.problem, param_hint="--signing-key") from None
    try:
        token, principal = signer.issue(
            kind,
            subject,
            tenant=tenant or "",
            partner=partner or "",
            scopes=scopes or None,
            ttl_seconds=ttl,
            audience=audience,
        )
    except InvalidSpecError as exc:
        hint = {"ttl_seconds": "--ttl", "scopes": "--scope"}.get(exc.field, f"--{exc.field}")
        raise click.BadParameter(exc.problem, param_hint=hint) from None
    click.echo(token)
    click.echo(
        f"{principal.name}: {' '.join(sorted(principal.scopes))}; "
        f"expires {_utc(principal.expires_at)} (in {_span(ttl)}), kid {signer.kid}",
        err=True,
    )


@tokens.command()
@click.argument("token", required=False, default="-")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")  # fmt: skip
def inspect(token: str, output: str) -> None:
    """Show a token's claims WITHOUT verifying its signature.

    TOKEN is read from stdin when it is "-" or left out (keeps it out of your
    shell history and the process list). The signature is never printed. To
    know whether the API will accept the token, call the API with it.

    \b
    Examples:
      sgctl tokens inspect "$SG_TOKEN"
      echo "$SG_TOKEN" | sgctl tokens inspect -o json
    """
    text = sys.stdin.read() if token == "-" else token  # noqa: S105 ("-" means stdin)
    try:
        claims = decode_unverified(text.strip())
    except UnauthenticatedError as exc:
        raise click.BadParameter(exc.message, param_hint="TOKEN") from None
    data = claims.to_dict()
    click.echo("NOT VERIFIED: decoded without checking the signature, audience or times", err=True)
    if output == "json":
        click.echo(json.dumps({**data, "verified": False}, indent=2))
        return
    now = time.time()
    state = (
        f"expired {_span(now - claims.exp)} ago"
        if now >= claims.exp
        else f"not valid for {_span(claims.nbf - now)} yet"
        if now < claims.nbf
        else f"expires in {_span(claims.exp - now)}"
    )
    rows = [
        ("verified", "NO (signature not checked)"),
        ("principal", claims.principal().name),
        ("kind", str(claims.kind)),
        ("subject", claims.sub),
        ("tenant", claims.tenant or "-"),
        ("partner", claims.partner or "-"),
        ("scopes", " ".join(claims.scopes)),
        ("audience", claims.aud),
        ("issued", _utc(claims.iat)),
        ("not before", _utc(claims.nbf)),
        ("expires", f"{_utc(claims.exp)} ({state})"),
        ("token id", claims.jti),
        ("key id", claims.kid),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k.upper():<{width}}  {v}")


COMMANDS: tuple[click.Command, ...] = (tokens,)
