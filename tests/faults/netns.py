"""A network of "hosts" for fault tests: one Linux network namespace per host, on one bridge.

``Network`` creates a bridge ``sgbr<suffix>`` in the root namespace with address
``10.X.0.1/24`` (X picked free in 200..250) and, per ``add_host(name)``, a namespace
``sg-<suffix>-<name>`` whose ``eth0`` (``10.X.0.N/24``, default route via the bridge) is one end of
a veth pair; the other end, ``sgv<suffix><N>``, is a port of the bridge. ``Host.link_down()`` takes
that port down: a whole-link partition of the host. A process in a host reaches the root
namespace at ``Network.root_ip`` (the bridge address), so a server in the root namespace must
listen on ``0.0.0.0`` or on ``root_ip``.

``LoopbackNetwork`` has the same interface for machines where namespaces cannot be made: every
host is ``127.0.0.1``, commands run directly, and partitions must go through
:class:`tests.faults.proxy.DelayProxy` instead. ``make_network()`` picks one.

Names carry a random 4-hex suffix, and each live network leaves its owner's pid in
``/run/sg-faults/<suffix>``, so parallel runs never clash and ``cleanup_stale()`` removes only what
crashed runs left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "Host",
    "LoopbackNetwork",
    "Network",
    "NetworkError",
    "available",
    "cleanup_stale",
    "make_network",
]

STATE_DIR = Path("/run/sg-faults")
"""Where each live ``Network`` records its owner's pid (one file per suffix)."""

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_NETNS_RE = re.compile(r"^sg-([0-9a-f]{4})-")
_LINK_RE = re.compile(r"^(?:sgbr([0-9a-f]{4})|sgv([0-9a-f]{4})\d+)$")
_MAX_HOSTS = 200


class NetworkError(RuntimeError):
    """An ``ip`` command failed; the message has the command and its stderr."""


def _ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; return its stdout, raise ``NetworkError`` on failure when ``check``."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


class Host:
    """One host of a network: a name, an address and (for namespaces) a netns and a link."""

    def __init__(self, name: str, ip: str, *, netns: str | None, veth: str | None) -> None:
        self.name = name
        """The name given to ``add_host``."""
        self.ip = ip
        """The host's address, as other hosts and the root namespace reach it."""
        self.netns = netns
        """Name of the host's network namespace; ``None`` on a loopback network."""
        self._veth = veth
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ip={self.ip!r}, netns={self.netns!r})"

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on this host (``ip netns exec NS argv``); ``kwargs`` go to ``Popen``.

        ``ip netns exec`` execs the command in place, so the ``Popen``'s pid is the command's and
        signals sent to it reach the command. The network kills what is still running at close.
        """
        full = ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)
        proc: subprocess.Popen[Any] = subprocess.Popen(full, **kwargs)
        self._procs.append(proc)
        return proc

    def link_down(self) -> None:
        """Cut the host's link (no packet in or out) until ``link_up()``."""
        _ip("link", "set", self._need_veth("link_down"), "down")

    def link_up(self, *, timeout: float = 5.0) -> None:
        """Restore the host's link; return once both ends have carrier (packets sent before
        that would be lost)."""
        veth = self._need_veth("link_up")
        _ip("link", "set", veth, "up")
        # ARP entries left INCOMPLETE by the cut would hold packets until their next probe.
        _ip("-n", str(self.netns), "neigh", "flush", "dev", "eth0", check=False)
        _ip("neigh", "flush", "to", self.ip, check=False)
        deadline = time.monotonic() + timeout
        while not (_lower_up(veth) and _lower_up("eth0", netns=self.netns)):
            if time.monotonic() > deadline:
                raise NetworkError(f"link of host {self.name!r} not up after {timeout:g}s")
            time.sleep(0.005)

    def _need_veth(self, what: str) -> str:
        if self._veth is None:
            raise NotImplementedError(
                f"{what}() needs network namespaces; on a loopback network every host is "
                "127.0.0.1, so partition through tests.faults.proxy.DelayProxy instead"
            )
        return self._veth

    def _kill_started(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()


class Network:
    """A bridge in the root namespace and one network namespace per host (a context manager).

    Needs root and ``ip``; see ``available()``. Everything it made is deleted by ``close()``
    (also after failures half-way), including processes still running in its namespaces.
    """

    kind: Literal["netns", "loopback"] = "netns"

    def __init__(self) -> None:
        self.suffix = ""
        """The random 4-hex suffix in every name this network makes (set by ``start()``)."""
        self.subnet_octet = 0
        """X in the network's ``10.X.0.0/24`` (set by ``start()``)."""
        self.hosts: dict[str, Host] = {}
        """The hosts added so far, by name."""
        self._bridge: str | None = None

    @property
    def bridge(self) -> str:
        """Name of the bridge in the root namespace."""
        return f"sgbr{self.suffix}"

    @property
    def root_ip(self) -> str:
        """The bridge's address: how processes in the hosts reach the root namespace."""
        return f"10.{self.subnet_octet}.0.1"

    def start(self) -> Self:
        """Create the bridge; called by ``__enter__``."""
        if self._bridge is not None:
            raise RuntimeError("network already started")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        try:
            with _state_lock():
                self.suffix = _new_suffix()
                (STATE_DIR / self.suffix).write_text(f"{os.getpid()}\n")
                self.subnet_octet = _free_subnet_octet()
                self._bridge = self.bridge
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.root_ip}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def add_host(self, name: str) -> Host:
        """Create host ``name`` (lower-case letters, digits, ``-``, ``_``) and return it."""
        if self._bridge is None:
            raise RuntimeError("start the network first (use it as a context manager)")
        if not _NAME_RE.match(name):
            raise ValueError(f"host name {name!r} must match {_NAME_RE.pattern}")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        index = len(self.hosts) + 2
        if index > _MAX_HOSTS:
            raise ValueError(f"at most {_MAX_HOSTS - 1} hosts per network")
        ns = f"sg-{self.suffix}-{name}"
        veth = f"sgv{self.suffix}{index}"
        host = Host(name, f"10.{self.subnet_octet}.0.{index}", netns=ns, veth=veth)
        self.hosts[name] = host  # before creating anything, so close() deletes what exists
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.root_ip)
        return host

    def close(self) -> None:
        """Kill the hosts' processes and delete the namespaces, links and bridge (idempotent)."""
        for host in self.hosts.values():
            host._kill_started()
            if host.netns:
                _kill_netns_pids(host.netns)
                _ip("netns", "del", host.netns, check=False)
            if host._veth:
                _ip("link", "del", host._veth, check=False)
        self.hosts.clear()
        if self._bridge is not None:
            _ip("link", "del", self._bridge, check=False)
            self._bridge = None
        if self.suffix:
            with contextlib.suppress(FileNotFoundError):
                (STATE_DIR / self.suffix).unlink()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LoopbackNetwork:
    """The same interface as ``Network`` where namespaces cannot be made: every host is
    ``127.0.0.1``, ``popen`` runs commands directly, and ``link_down``/``link_up`` raise
    ``NotImplementedError`` (partition through a ``DelayProxy`` instead)."""

    kind: Literal["netns", "loopback"] = "loopback"
    root_ip = "127.0.0.1"
    """How processes in the hosts reach the test process."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        """The hosts added so far, by name."""

    def start(self) -> Self:
        """Nothing to create; for symmetry with ``Network``."""
        return self

    def add_host(self, name: str) -> Host:
        """Return a host named ``name`` at ``127.0.0.1``."""
        if not _NAME_RE.match(name):
            raise ValueError(f"host name {name!r} must match {_NAME_RE.pattern}")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        host = Host(name, "127.0.0.1", netns=None, veth=None)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Kill the processes started through the hosts that are still running."""
        for host in self.hosts.values():
            host._kill_started()
        self.hosts.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@functools.cache
def available() -> str | None:
    """``None`` if namespaces can be made here (root, ``ip``, a probe network works), else a
    one-line reason. The answer is cached for the process."""
    if os.geteuid() != 0:
        return "not root"
    try:
        subprocess.run(["ip", "-V"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "the `ip` command (iproute2) is missing"
    try:
        with Network() as net:
            net.add_host("probe")
    except (OSError, NetworkError) as exc:
        return f"probe network failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    return None


def make_network(*, prefer_netns: bool = True) -> Network | LoopbackNetwork:
    """A ``Network`` if namespaces can be made (after ``cleanup_stale()``), else a
    ``LoopbackNetwork``, saying why on one line of stderr. Use the result as a context manager."""
    reason = available() if prefer_netns else "not wanted by the caller"
    if reason is None:
        cleanup_stale()
        return Network()
    print(
        f"faults: network namespaces not used ({reason}); hosts share 127.0.0.1",
        file=sys.stderr,
    )
    return LoopbackNetwork()


def cleanup_stale() -> list[str]:
    """Delete namespaces, links and owner files that runs which are no longer alive left behind.

    Returns the names deleted. Networks whose owner process is alive are left alone.
    """
    removed: list[str] = []
    with _state_lock():
        live = {s for s in _owner_suffixes() if _owner_alive(s)}
        for ns in _list_netns():
            m = _NETNS_RE.match(ns)
            if m and m.group(1) not in live:
                _kill_netns_pids(ns)
                _ip("netns", "del", ns, check=False)
                removed.append(ns)
        for link in sorted(_list_links(), key=lambda name: name.startswith("sgbr")):
            m = _LINK_RE.match(link)
            if m and (m.group(1) or m.group(2)) not in live:
                _ip("link", "del", link, check=False)
                removed.append(link)
        for suffix in _owner_suffixes() - live:
            with contextlib.suppress(FileNotFoundError):
                (STATE_DIR / suffix).unlink()
    return removed


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialise suffix and subnet choices (and cleanup) across processes."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _new_suffix() -> str:
    taken = _owner_suffixes() | {
        m.group(1) or m.group(2) for m in map(_LINK_RE.match, _list_links()) if m
    }
    while True:
        suffix = secrets.token_hex(2)
        if suffix not in taken:
            return suffix


def _free_subnet_octet() -> int:
    used = {int(m) for m in re.findall(r"\binet 10\.(\d+)\.", _ip("-4", "-o", "addr", "show"))}
    free = [x for x in range(200, 251) if x not in used]
    if not free:
        raise NetworkError("no free 10.X.0.0/24 subnet with X in 200..250")
    return random.choice(free)


def _owner_suffixes() -> set[str]:
    if not STATE_DIR.is_dir():
        return set()
    return {p.name for p in STATE_DIR.iterdir() if re.fullmatch(r"[0-9a-f]{4}", p.name)}


def _owner_alive(suffix: str) -> bool:
    try:
        pid = int((STATE_DIR / suffix).read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _list_netns() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).splitlines() if line]


def _list_links() -> list[str]:
    names = []
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.append(parts[1].split("@", 1)[0])
    return names


def _lower_up(dev: str, *, netns: str | None = None) -> bool:
    where = ("-n", netns) if netns else ()
    flags = _ip(*where, "-o", "link", "show", "dev", dev, check=False).partition("<")[2]
    return "LOWER_UP" in flags.partition(">")[0].split(",")


def _kill_netns_pids(ns: str) -> None:
    for pid in _ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
