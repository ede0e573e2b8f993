"""``sgctl partners enrol``, ``sgctl offers`` and ``sgctl usage`` against the secured API, with
the CA and token taken from the environment as a user would set them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner, Result
from secure_stack import SecureApi

from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.cli import cli


async def sgctl(api: SecureApi, token: str, tmp_path: Path, *args: str) -> Result:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    env = {
        "SG_API": api.address,
        "SG_CA": str(api.pki.certs / "ca.pem"),
        "SG_TOKEN_FILE": str(token_file),
        "SG_INSECURE": None,
        "SG_TOKEN": None,
    }
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, list(args), env=env)


async def test_an_operator_enrols_a_partner_that_then_offers_and_reads_usage(
    secure_api: SecureApi, tmp_path: Path
) -> None:
    t = secure_api.tokens
    enrolled = await sgctl(secure_api, t.operator, tmp_path, "partners", "enrol", "fjord-gpu")
    assert enrolled.exit_code == 0, enrolled.output
    token = enrolled.stdout.strip()
    assert token.startswith("sg1.") and "\n" not in token
    client = await secure_api.client(token)
    try:
        partner_token = (await client.enrol()).token
    finally:
        await client.close()

    refused = await sgctl(secure_api, t.acme, tmp_path, "partners", "enrol", "acme-partner")
    assert refused.exit_code == 7 and "federation:admin" in refused.output

    partner = await secure_api.client(partner_token)
    try:
        site = types_pb2.Site(
            id="fjord",
            jurisdiction="NO",
            gpus=[types_pb2.GpuPool(type="H100", count=8, watts=1000)],
            endpoint="127.0.0.1:1",
            home_countries=["NO"],
        )
        await partner.register_partner_site(site)
        await partner.offer_capacity(
            federation_pb2.CapacityOffer(
                site_id="fjord",
                gpus=[types_pb2.GpuPool(type="H100", count=4)],
                tenant_countries=["GB"],
                hours=[federation_pb2.HourWindow(start_hour=22, end_hour=6)],
            )
        )
    finally:
        await partner.close()
    offers = await sgctl(secure_api, partner_token, tmp_path, "offers")
    assert offers.exit_code == 0, offers.output
    assert "fjord" in offers.stdout and "H100 4" in offers.stdout and "22-06 UTC" in offers.stdout
    usage = await sgctl(secure_api, partner_token, tmp_path, "usage", "-o", "json")
    assert usage.exit_code == 0, usage.output
    assert [s["site_id"] for s in json.loads(usage.stdout)] == ["fjord"]
    other = await sgctl(secure_api, partner_token, tmp_path, "usage", "narvik")
    assert other.exit_code == 7 and "not yours" in other.output
    bad_ttl = await sgctl(
        secure_api, t.operator, tmp_path, "partners", "enrol", "x", "--ttl", "soon"
    )
    assert bad_ttl.exit_code == 2 and "--ttl" in bad_ttl.output
