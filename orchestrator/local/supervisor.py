"""The embedded default: Redis, Ray, the control plane, the API server and demo site agents,
all on one machine, supervised by one process (``python -m orchestrator.local``).

``sgctl up`` starts this process in its own session and waits for the state file; ``sgctl down``
sends it SIGTERM, and it stops everything it started, in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config import ControlPlaneConfig, RedisConfig, SecurityConfig, TlsFiles
from orchestrator.controlplane import ControlPlane
from orchestrator.gc_tuning import tune_garbage_collector
from orchestrator.local.state import UpState, state_path, write_state
from orchestrator.processes import stop_process
from orchestrator.security.certs import write_dev_pki, write_site_certificate
from orchestrator.security.files import write_atomically
from orchestrator.security.tokens import Kind, TokenSigner, write_key_pair
from orchestrator.sitefile import SiteConfig, load_site_file
from orchestrator.store import JobStore, LocalRedis
from orchestrator.tenantfile import load_tenant_file
from orchestrator.tracing import configure_tracing
from orchestrator.validation import normalize_site

__all__ = ["UpOptions", "main", "run_supervisor"]

log = logging.getLogger(__name__)
PROGRESS_FILE = "up.progress"


@dataclass(frozen=True)
class UpOptions:
    """What to start."""

    state_dir: Path
    """Redis data, Ray's temp dir, logs, agents' state, and the state file."""
    sites_file: Path
    """Site file; one demo agent is started per site in it."""
    api_listen: str = "127.0.0.1:50051"
    """API server address."""
    redis_url: str | None = None
    """An external Redis; None starts an embedded redis-server."""
    redis_ca_certs: str | None = None
    """CA bundle to verify an external ``rediss://`` Redis with."""
    ray_address: str | None = None
    """An existing Ray cluster; None starts a local one."""
    dispatchers: int = 2
    """Dispatcher actors."""
    start_agents: bool = True
    """Start a demo agent per site (False: only register nothing; agents run elsewhere)."""
    tenants_file: Path | None = None
    """Tenant file to load (home countries, weights, quotas); None loads none."""
    otel_env: Mapping[str, str] = field(default_factory=dict)
    """OTEL_* variables passed on to the actors and agents."""
    insecure: bool = False
    """Plaintext API and agent streams (no certificates made). Tokens are still required."""


OPERATOR_TOKEN_TTL = 30 * 24 * 3600


@dataclass(frozen=True)
class _Credentials:
    """What the embedded default made in its state dir: certificates and token keys."""

    security: SecurityConfig
    certs: Path
    token_file: Path


def _host_names(listen: str) -> tuple[str, ...]:
    host = listen.rpartition(":")[0].strip("[]")
    names = ["localhost", "127.0.0.1"]
    if host and host not in names and host not in ("0.0.0.0", "::"):
        names.append(host)
    return tuple(names)


def _make_credentials(opts: UpOptions, sites: list[SiteConfig]) -> _Credentials:
    """Certificates (a development CA, the API's, the control plane's, one per site) and the
    token keys, made once and kept; a fresh operator token on every start."""
    certs = opts.state_dir / "certs"
    auth = opts.state_dir / "auth"
    signing, verify = write_key_pair(auth)
    token, _ = TokenSigner.from_file(signing).issue(
        Kind.OPERATOR, "sgctl-up", ttl_seconds=OPERATOR_TOKEN_TTL
    )
    token_file = auth / "operator.token"
    write_atomically(token_file, (token + "\n").encode(), mode=0o600)
    if opts.insecure:
        log.warning("INSECURE: the API and the agent streams run in plaintext (--insecure)")
        security = SecurityConfig(
            insecure=True, token_verify_keys=(verify,), token_signing_key=signing
        )
        return _Credentials(security, certs, token_file)
    write_dev_pki(certs, api_hosts=_host_names(opts.api_listen))
    for site in sites:
        write_site_certificate(certs, site.id)
    security = SecurityConfig(
        api_tls=TlsFiles.in_dir(certs, "api"),
        agent_tls=TlsFiles.in_dir(certs, "control-plane"),
        issuing_ca=TlsFiles(ca=certs / "ca.pem", cert=certs / "ca.pem", key=certs / "ca-key.pem"),
        token_verify_keys=(verify,),
        token_signing_key=signing,
    )
    return _Credentials(security, certs, token_file)


class _Progress:
    """Stage lines for ``sgctl up`` to show while it waits."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PROGRESS_FILE
        self.path.write_text("")

    def __call__(self, line: str) -> None:
        log.info("%s", line)
        with self.path.open("a") as f:
            f.write(line + "\n")


def _spawn_agent(
    opts: UpOptions, site: SiteConfig, creds: _Credentials
) -> tuple[subprocess.Popen[bytes], Path]:
    sdir = opts.state_dir / "agents" / site.id
    sdir.mkdir(parents=True, exist_ok=True)
    ready = sdir / "ready"
    ready.unlink(missing_ok=True)
    sites_dir = creds.certs / "sites"
    tls = (
        ["--insecure"]
        if opts.insecure
        else [
            "--tls-ca", str(creds.certs / "ca.pem"),
            "--tls-cert", str(sites_dir / f"{site.id}.pem"),
            "--tls-key", str(sites_dir / f"{site.id}-key.pem"),
        ]
    )  # fmt: skip
    with (opts.state_dir / "logs" / f"agent-{site.id}.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "agents",
                "--sites", str(opts.sites_file), "--site", site.id,
                "--listen", "127.0.0.1:0", "--state-dir", str(sdir),
                "--ready-file", str(ready), *tls,
            ],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **opts.otel_env},
        )  # fmt: skip
    return proc, ready


async def _start_agents(
    opts: UpOptions, sites: list[SiteConfig], creds: _Credentials, progress: _Progress
) -> dict[str, tuple[subprocess.Popen[bytes], str]]:
    logs = opts.state_dir / "logs"
    procs = {site.id: _spawn_agent(opts, site, creds) for site in sites}
    out: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    deadline = time.monotonic() + 60
    while len(out) < len(procs):
        for site_id, (proc, ready) in procs.items():
            if site_id in out:
                continue
            if ready.exists():
                out[site_id] = (proc, ready.read_text().strip())
                progress(f"agent {site_id} serving on {out[site_id][1]}")
            elif proc.poll() is not None:
                raise RuntimeError(
                    f"agent for site {site_id} exited with {proc.returncode}; "
                    f"see {logs / f'agent-{site_id}.log'}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError("agents did not start within 60s")
        await asyncio.sleep(0.05)
    return out


async def _wait_connected(store: JobStore, site_ids: list[str], progress: _Progress) -> None:
    """Wait until the dispatchers hold a stream to every site (or say which did not connect)."""
    deadline = time.monotonic() + 30
    while True:
        records = await store.site_records(site_ids)
        connected = sorted(r.site.id for r in records if r.connected_by)
        if len(connected) == len(site_ids):
            progress(f"dispatchers connected to all {len(site_ids)} sites")
            return
        if time.monotonic() > deadline:
            missing = sorted(set(site_ids) - set(connected))
            progress(f"WARNING: not yet connected after 30s: {', '.join(missing)}")
            return
        await asyncio.sleep(0.1)


async def run_supervisor(opts: UpOptions, stop: asyncio.Event) -> None:
    """Start everything, write the state file, wait for ``stop``, stop everything."""
    from orchestrator.api.server import ApiServer

    opts.state_dir.mkdir(parents=True, exist_ok=True)
    (opts.state_dir / "logs").mkdir(exist_ok=True)
    progress = _Progress(opts.state_dir)
    sites = load_site_file(opts.sites_file) if opts.start_agents else []
    redis_server: LocalRedis | None = None
    control_plane: ControlPlane | None = None
    api: ApiServer | None = None
    agents: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    store: JobStore | None = None
    try:
        if opts.redis_url:
            redis_url = opts.redis_url
            progress(f"using Redis at {RedisConfig.from_url(redis_url).display_url}")
        else:
            progress("starting Redis (append-only, fsync always)")
            redis_server = LocalRedis(opts.state_dir / "redis")
            redis_url = await asyncio.to_thread(redis_server.start)
        progress(
            "making token keys and an operator token"
            + ("" if opts.insecure else "; certificates for the API, control plane and sites")
        )
        creds = await asyncio.to_thread(_make_credentials, opts, sites)
        config = ControlPlaneConfig(
            redis=RedisConfig.from_url(redis_url, ssl_ca_certs=opts.redis_ca_certs),
            dispatchers=opts.dispatchers,
            api_listen=opts.api_listen,
            ray_address=opts.ray_address,
            state_dir=opts.state_dir,
            security=creds.security,
        )
        store = JobStore.from_config(config.redis)
        await store.ping()
        for warning in await store.durability_warnings():
            log.warning("%s", warning)
            progress(f"WARNING: {warning}")
        progress("starting Ray and the control plane (scheduler, dispatchers)")
        control_plane = ControlPlane(config, otel_env=opts.otel_env)
        await asyncio.to_thread(control_plane.start)
        progress("starting the API server")
        api = ApiServer(store, listen=opts.api_listen, security=creds.security)
        address = await api.start()
        progress(f"API server on {address} ({'PLAINTEXT' if opts.insecure else 'TLS'})")
        if opts.tenants_file is not None:
            tenants = load_tenant_file(opts.tenants_file)
            for tenant in tenants:
                await store.put_tenant(tenant)
            progress(f"loaded {len(tenants)} tenants from {opts.tenants_file.name}")
        if sites:
            progress(f"starting {len(sites)} site agents")
            agents = await _start_agents(opts, sites, creds, progress)
            for site in sites:
                reg = site.to_proto()
                reg.endpoint = agents[site.id][1]
                await store.register_site(normalize_site(reg))
            await _wait_connected(store, [s.id for s in sites], progress)
        write_state(
            opts.state_dir,
            UpState(
                pid=os.getpid(),
                api=address,
                redis_url=RedisConfig.from_url(redis_url).display_url,
                state_dir=str(opts.state_dir.resolve()),
                agents={s: {"pid": p.pid, "endpoint": e} for s, (p, e) in agents.items()},
                redis_pid=redis_server.process.pid
                if redis_server and redis_server.process
                else None,
                ca="" if opts.insecure else str((creds.certs / "ca.pem").resolve()),
                token_file=str(creds.token_file.resolve()),
            ),
        )
        progress("ready")
        await stop.wait()
    finally:
        log.info("stopping")
        state_path(opts.state_dir).unlink(missing_ok=True)
        for proc, _ in agents.values():
            proc.terminate()
        for proc, _ in agents.values():
            await asyncio.to_thread(stop_process, proc, timeout=15)
        if api is not None:
            await api.stop(grace=3)
        if control_plane is not None:
            await asyncio.to_thread(control_plane.stop)
        if store is not None:
            await store.close()
        if redis_server is not None:
            await asyncio.to_thread(redis_server.stop)
        (opts.state_dir / PROGRESS_FILE).unlink(missing_ok=True)
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    """Entrypoint of the supervisor process (started by ``sgctl up``)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.local", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--sites", type=Path, required=True)
    parser.add_argument("--api-listen", default="127.0.0.1:50051")
    parser.add_argument("--redis-url")
    parser.add_argument("--ray-address")
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--no-agents", action="store_true")
    parser.add_argument("--tenants", type=Path)
    parser.add_argument("--insecure", action="store_true")
    ns = parser.parse_args(argv)
    state_dir = ns.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(state_dir / "logs" / "supervisor.log")],
    )
    otel_env = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    configure_tracing("sg-api", otel_env)
    tune_garbage_collector()
    opts = UpOptions(
        state_dir=state_dir,
        sites_file=ns.sites.resolve(),
        api_listen=ns.api_listen,
        redis_url=ns.redis_url or os.environ.get("SG_UP_REDIS_URL") or None,
        redis_ca_certs=os.environ.get("SG_REDIS_CA_CERTS") or None,
        ray_address=ns.ray_address,
        dispatchers=ns.dispatchers,
        start_agents=not ns.no_agents,
        tenants_file=ns.tenants.resolve() if ns.tenants else None,
        otel_env=otel_env,
        insecure=ns.insecure,
    )

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_supervisor(opts, stop)

    try:
        asyncio.run(amain())
    except Exception:
        log.exception("supervisor failed")
        with contextlib.suppress(OSError), (state_dir / PROGRESS_FILE).open("a") as f:
            f.write("FAILED: see logs/supervisor.log\n")
        return 1
    return 0
