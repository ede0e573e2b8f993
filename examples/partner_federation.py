"""A partner federates its own site with the SDK alone, end to end, against `sgctl up`.

    sgctl up                                   # TLS, mTLS and tokens, with no configuration
    python examples/partner_federation.py      # this script
    sgctl down

The story: the partner "arctic-compute" runs a small site at Tromsø (Norway). The federation's
operator hands it a single-use enrolment token. With it, the partner's own code:

1. enrols, and from then on uses its own partner token;
2. registers its site (jurisdiction, GPUs, power cap, agent endpoint) with a certificate
   signing request, and receives the site's identity: the TLS name its agent must present and
   a certificate for it;
3. starts its site agent with that certificate (the control plane connects to it over mTLS);
4. sets the site's home-ecosystem policy (Norwegian tenants first) and offers 8 GPUs to
   tenants from the UK and the Nordics;
5. watches a UK lab's job run on its site, reads the GPU-hours and energy that tenant used;
6. tries to touch a site it does not own (refused), and withdraws its site gracefully.

Only step 0 (the enrolment token) and the UK lab's job are someone else's: they use the
operator token `sgctl up` wrote. Exits 0 when every step did what it should.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.config import TlsFiles
from orchestrator.errors import PermissionDeniedError
from orchestrator.sdk import Client
from orchestrator.security.certs import generate_key, make_csr
from orchestrator.spec import JobSpec, Placement, Resources

PARTNER = "arctic-compute"
SITE = "tromso"


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_file(path: Path) -> None:
    """The site file the partner's agent reads (the same facts the partner registers)."""
    path.write_text(
        f"sites:\n"
        f"  - id: {SITE}\n    name: Tromsø\n    jurisdiction: NO\n    owner: {PARTNER}\n"
        f"    power_cap_mw: 2\n    cpus: 256\n    memory_mb: 1048576\n"
        f"    gpus: {{H100: 16}}\n    gpu_watts: {{H100: 1200}}\n    home_countries: [NO]\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".sg"), help="sgctl up's state")
    args = parser.parse_args()
    up = json.loads((args.state_dir / "up.json").read_text())
    api = up["api"]
    tls: TlsFiles | bool = TlsFiles(ca=Path(up["ca"])) if up["ca"] else False
    operator_token = Path(up["token_file"]).read_text().strip()

    step(f"operator: an enrolment token for partner {PARTNER}")
    with Client.connect(api, tls=tls, token=operator_token) as operator:
        enrolment = operator.create_enrolment(PARTNER, ttl_seconds=3600).token

    step("partner: enrol (spends the enrolment token) and switch to the partner token")
    with Client.connect(api, tls=tls, token=enrolment) as first:
        partner_token = first.enrol().token
    partner = Client.connect(api, tls=tls, token=partner_token)

    work = Path(tempfile.mkdtemp(prefix="partner-"))
    key = generate_key()
    port = free_port()
    site = types_pb2.Site(
        id=SITE,
        name="Tromsø",
        jurisdiction="NO",
        gpus=[types_pb2.GpuPool(type="H100", count=16, watts=1200)],
        power_cap_mw=2.0,
        cpus=256,
        memory_mb=1024 * 1024,
        endpoint=f"127.0.0.1:{port}",
        home_countries=["NO"],
    )
    step(f"partner: register site {SITE} with a CSR; receive its identity")
    registered = partner.register_partner_site(site, csr_pem=make_csr(key))
    identity = registered.identity
    print(
        f"    TLS name {identity.tls_server_name}, certificate until "
        f"{identity.not_after.ToDatetime():%Y-%m-%d}, owner {registered.site.site.owner}"
    )
    (work / "site.pem").write_text(identity.certificate_pem)
    (work / "site-key.pem").write_bytes(key)
    (work / "ca.pem").write_text(identity.ca_pem)
    site_file(work / "sites.yaml")

    step("partner: start the site's agent with the issued certificate")
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "agents", "--sites", str(work / "sites.yaml"), "--site", SITE,
            "--listen", f"127.0.0.1:{port}", "--state-dir", str(work / "state"),
            *(
                ["--tls-ca", str(work / "ca.pem"), "--tls-cert", str(work / "site.pem"),
                 "--tls-key", str(work / "site-key.pem")]
                if identity.certificate_pem else ["--insecure"]
            ),
        ],
        stdout=(work / "agent.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    ok = True
    try:
        deadline = time.monotonic() + 30
        while not partner.get_site(SITE).connected:
            if time.monotonic() > deadline or agent.poll() is not None:
                print(f"    the site did not connect; see {work / 'agent.log'}")
                return 1
            time.sleep(0.2)
        print("    connected over mTLS")

        step("partner: home-ecosystem policy, and 8 GPUs offered to the UK and the Nordics")
        partner.set_partner_site_policy(
            SITE, types_pb2.SitePolicy(has_surplus_limit=True, surplus_gpus=0)
        )
        offer = partner.offer_capacity(
            federation_pb2.CapacityOffer(
                site_id=SITE,
                gpus=[types_pb2.GpuPool(type="H100", count=8)],
                tenant_countries=["GB"],
                jurisdictions=["NORDICS"],
            )
        )
        print(f"    offer {offer.id}: active now {offer.active_now}")

        step("a UK lab's job that may only run at Tromsø")
        with Client.connect(api, tls=tls, token=operator_token) as operator:
            job = operator.submit(
                JobSpec(
                    name="uk-on-tromso",
                    tenant="cam-ml",
                    command=["sh", "-c", "sleep 1; echo trained"],
                    resources=Resources(gpus=4, gpu_type="H100"),
                    placement=Placement(allowed_jurisdictions=["NO"], excluded_sites=["narvik"]),
                )
            )
            final = job.wait(timeout=60)
        ran_here = final.site == SITE and final.state == types_pb2.JOB_STATE_SUCCEEDED
        print(f"    {final.id}: {types_pb2.JobState.Name(final.state)} on {final.site}")
        ok &= ran_here

        step("partner: usage of its site")
        [usage] = partner.usage([SITE])
        for t in usage.tenants:
            print(f"    {t.tenant}: {t.gpu_hours:.4f} GPU-hours, {t.energy_kwh:.4f} kWh")
        ok &= any(t.tenant == "cam-ml" and t.gpu_hours > 0 for t in usage.tenants)

        step("partner: another partner's site is not ours")
        try:
            partner.withdraw_capacity("narvik", mode="requeue")
            print("    NOT refused")
            ok = False
        except PermissionDeniedError as exc:
            print(f"    refused: {exc}")

        step("partner: withdraw the site gracefully (cordon, then drain; jobs finish)")
        withdrawn = partner.withdraw_capacity(SITE, mode="finish", reason="maintenance")
        state = types_pb2.SiteState.Name(withdrawn.site.state)
        print(f"    {SITE} is {state}; {withdrawn.still_running} job(s) still running")
        ok &= withdrawn.site.state == types_pb2.SITE_STATE_DRAINING
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        partner.close()
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
