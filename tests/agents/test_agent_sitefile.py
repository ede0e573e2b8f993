"""The site file format: orchestrator/sitefile.py and examples/sites.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InvalidSpecError, SiteNotFoundError
from orchestrator.sitefile import (
    SiteConfig,
    load_site_file,
    parse_sites,
    select_site,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sites.yaml"

GOOD_SITE = """\
  - id: {id}
    name: Site {id}
    jurisdiction: {jurisdiction}
    regions: [eu]
    owner: someone
    power_cap_mw: 10
    cpus: 128
    memory_mb: 1024
    gpus: {{H100: 8}}
"""


def write_sites(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my-sites.yaml"
    path.write_text("sites:\n" + body)
    return path


def test_example_file_has_the_demo_sites() -> None:
    sites = {s.id: s for s in load_site_file(EXAMPLE)}
    assert {"narvik", "abu-dhabi", "abilene"} <= set(sites)
    narvik = sites["narvik"]
    assert narvik.jurisdiction == "NO"  # not the YAML 1.1 boolean false
    assert narvik.home_countries == ("NO",)
    assert narvik.total_gpus == 100_000
    assert narvik.power_cap_mw == 230.0
    assert narvik.renewable_share == 1.0
    assert narvik.regions == ("eu", "nordics")
    assert sites["abu-dhabi"].jurisdiction == "AE"
    assert sites["abilene"].jurisdiction == "US"
    # Power drawn by the GPUs alone must fit under each site's cap.
    for site in sites.values():
        gpu_mw = sum(site.gpu_watts[t] * n for t, n in site.gpus.items()) / 1e6
        assert gpu_mw < site.power_cap_mw, site.id


def test_yes_and_no_stay_strings_but_true_is_a_boolean(tmp_path: Path) -> None:
    body = GOOD_SITE.format(id="a", jurisdiction="NO") + "    renewable_share: true\n"
    with pytest.raises(InvalidSpecError) as info:
        load_site_file(write_sites(tmp_path, body))
    assert info.value.field == "sites[0].renewable_share"
    assert "must be a number" in info.value.problem


@pytest.mark.parametrize(
    ("second_site", "field", "fragment"),
    [
        (GOOD_SITE.format(id="b", jurisdiction="XX"), "sites[1].jurisdiction", "ISO 3166-1"),
        (GOOD_SITE.format(id="b", jurisdiction="UK"), "sites[1].jurisdiction", "use 'GB'"),
        (GOOD_SITE.format(id="b", jurisdiction="no"), "sites[1].jurisdiction", "upper case"),
        (GOOD_SITE.format(id="a", jurisdiction="SE"), "sites[1].id", "duplicate site id 'a'"),
        (GOOD_SITE.format(id="Bad_Id", jurisdiction="SE"), "sites[1].id", "lowercase"),
        (
            GOOD_SITE.format(id="b", jurisdiction="SE") + "    gpu: {A100: 1}\n",
            "sites[1].gpu",
            "unknown key",
        ),
        (
            GOOD_SITE.format(id="b", jurisdiction="SE").replace("    owner: someone\n", ""),
            "sites[1].owner",
            "required",
        ),
        (
            GOOD_SITE.format(id="b", jurisdiction="SE").replace("{H100: 8}", "{H100: eight}"),
            "sites[1].gpus.H100",
            "integer",
        ),
        (
            GOOD_SITE.format(id="b", jurisdiction="SE") + "    gpu_watts: {B200: 1000}\n",
            "sites[1].gpu_watts.B200",
            "not one of this site's gpus",
        ),
        (
            GOOD_SITE.format(id="b", jurisdiction="SE") + "    renewable_share: 1.5\n",
            "sites[1].renewable_share",
            "between 0 and 1",
        ),
        (
            GOOD_SITE.format(id="b", jurisdiction="SE") + "    home_countries: [NOR]\n",
            "sites[1].home_countries[0]",
            "ISO 3166-1",
        ),
        (
            GOOD_SITE.format(id="b", jurisdiction="SE").replace(
                "power_cap_mw: 10", "power_cap_mw: 0"
            ),
            "sites[1].power_cap_mw",
            "> 0",
        ),
    ],
)
def test_bad_sites_name_the_field_and_the_file(
    tmp_path: Path, second_site: str, field: str, fragment: str
) -> None:
    path = write_sites(tmp_path, GOOD_SITE.format(id="a", jurisdiction="NO") + second_site)
    with pytest.raises(InvalidSpecError) as info:
        load_site_file(path)
    assert info.value.field == field
    assert fragment in info.value.problem
    assert "my-sites.yaml" in info.value.problem


def test_unknown_top_level_key_is_named() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_sites({"sites": [], "site": []}, source="inline")
    assert info.value.field == "site"
    assert "inline" in info.value.problem


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("sites:\n  - id: [unclosed\n")
    with pytest.raises(InvalidSpecError, match=r"broken\.yaml.*line"):
        load_site_file(bad)
    with pytest.raises(InvalidSpecError, match="cannot read"):
        load_site_file(tmp_path / "nope.yaml")


def test_proto_round_trip_and_hashable() -> None:
    narvik = select_site(load_site_file(EXAMPLE), "narvik")
    message = narvik.to_proto()
    assert message.endpoint == ""
    assert [(p.type, p.count) for p in message.gpus] == [("H100", 60000), ("GB200", 40000)]
    back = SiteConfig.from_proto(message)
    assert back == narvik  # every field is carried on the wire
    assert len({narvik, select_site(load_site_file(EXAMPLE), "narvik")}) == 1
    with pytest.raises(TypeError):
        narvik.gpus["H100"] = 1  # type: ignore[index]
    with pytest.raises(SiteNotFoundError):
        select_site([narvik], "atlantis")
