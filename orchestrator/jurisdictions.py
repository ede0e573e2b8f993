"""Jurisdictions: ISO 3166-1 alpha-2 country codes, checked the same way everywhere."""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.errors import InvalidSpecError

__all__ = ["GROUPS", "ISO_COUNTRY_CODES", "check_country", "check_jurisdiction", "expand"]

_CODES_TEXT = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
"""

#: Every officially assigned ISO 3166-1 alpha-2 code.
ISO_COUNTRY_CODES: frozenset[str] = frozenset(_CODES_TEXT.split())

# Common mistakes worth a hint: these look like country codes but are not ISO 3166-1 alpha-2.
_CODE_HINTS = {"UK": "GB", "EL": "GR"}


def check_country(field_name: str, code: str) -> None:
    """Raise ``InvalidSpecError`` unless ``code`` is an upper-case ISO 3166-1 alpha-2 code."""
    if code in ISO_COUNTRY_CODES:
        return
    hint = _CODE_HINTS.get(code.upper())
    if hint:
        raise InvalidSpecError(
            field_name, f"{code!r} is not an ISO 3166-1 alpha-2 code (use {hint!r})"
        )
    if code.upper() in ISO_COUNTRY_CODES:
        raise InvalidSpecError(field_name, f"{code!r} must be upper case ({code.upper()!r})")
    raise InvalidSpecError(field_name, f"{code!r} is not an ISO 3166-1 alpha-2 code")


_EU = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)

#: Named groups of jurisdictions a job may allow instead of (or beside) single countries.
GROUPS: dict[str, frozenset[str]] = {
    "EU": _EU,
    "EEA": _EU | {"IS", "LI", "NO"},
    "NORDICS": frozenset({"DK", "FI", "IS", "NO", "SE"}),
    "NORTHERN_EUROPE": frozenset({"DK", "EE", "FI", "GB", "IE", "IS", "LT", "LV", "NO", "SE"}),
    "GCC": frozenset({"AE", "BH", "KW", "OM", "QA", "SA"}),
}


def check_jurisdiction(field_name: str, code: str) -> None:
    """Raise unless ``code`` is an ISO 3166-1 alpha-2 code or a group name (``EEA``, ...)."""
    if code in GROUPS:
        return
    try:
        check_country(field_name, code)
    except InvalidSpecError as exc:
        groups = ", ".join(sorted(GROUPS))
        raise InvalidSpecError(field_name, f"{exc.problem}, nor a group ({groups})") from None


def expand(codes: Iterable[str]) -> frozenset[str]:
    """The countries a list of codes and group names covers (empty stays empty: anywhere)."""
    out: set[str] = set()
    for code in codes:
        out |= GROUPS.get(code, {code})
    return frozenset(out)
