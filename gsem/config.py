"""The engine's configuration: one TOML file in a data directory.

``gsem init DIR`` writes ``DIR/gsem.toml``; every other command finds its data
directory with ``--data-dir`` (default: ``$GSEM_DATA_DIR``, else ``./demo``).  Relative
paths in the file are relative to the data directory.  All problems in a file are
reported at once (buildbot's ``config/errors.py`` does the same).
"""

from __future__ import annotations

import hashlib
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gsem.errors import ConfigError

__all__ = ["Limits", "DeliveryConfig", "Config", "CONFIG_NAME", "default_data_dir", "default_node_id",
           "load_config", "render_config"]

CONFIG_NAME = "gsem.toml"


def default_data_dir() -> Path:
    """The data directory used when ``--data-dir`` is not given."""
    return Path(os.environ.get("GSEM_DATA_DIR", "demo"))


#: The most worker processes ``[server] workers`` may ask for.
MAX_WORKERS = 64


@dataclass(frozen=True)
class Limits:
    """Limits of SPEC §8 (all configurable under ``[limits]``)."""

    max_body_bytes: int = 1024 * 1024
    max_depth: int = 32
    max_elements: int = 20_000
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections_per_partner: int = 64


@dataclass(frozen=True)
class DeliveryConfig:
    """How this node forwards deliveries (SPEC §7), under ``[delivery]``.

    ``node_id`` names this node's leases: nodes sharing a database need different ids,
    and a node must keep its id across restarts so that it can release the leases it held
    when it stopped (see :func:`default_node_id`).
    """

    enabled: bool = True
    node_id: str = ""
    poll_interval: float = 0.2
    lease_seconds: float = 60.0
    concurrency: int = 16


def default_node_id(data_dir: Path) -> str:
    """``HOST:HASH``: this host's name and a hash of the data directory.

    Stable across restarts of the same node, different for two nodes on one host.
    """
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{socket.gethostname()[:80]}:{digest}"


@dataclass(frozen=True)
class Config:
    """A loaded, checked configuration with absolute paths."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    database_url: str = ""
    ca_paths: tuple[Path, ...] = ()
    crl_paths: tuple[Path, ...] = ()
    server_cert: Path = Path()
    server_key: Path = Path()
    limits: Limits = field(default_factory=Limits)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)


def _resolve(data_dir: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else data_dir / path


def _database_url(data_dir: Path, url: str) -> str:
    # "sqlite:///gsem.db" is relative to the data directory, not the working directory.
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str((data_dir / url[len(prefix):]).resolve())
    return url


def load_config(data_dir: Path) -> Config:
    """Read ``DATA_DIR/gsem.toml``; raise :class:`ConfigError` listing every problem."""
    data_dir = data_dir.resolve()
    path = data_dir / CONFIG_NAME
    if not path.exists():
        raise ConfigError([f"{path}: no such file; create a data directory with 'gsem init {data_dir}'"])
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: {e}"]) from None

    problems: list[str] = []
    server = raw.get("server", {})
    tls = raw.get("tls", {})
    database = raw.get("database", {})
    limits_raw = raw.get("limits", {})

    port = server.get("port", 8443)
    if not isinstance(port, int) or not 0 <= port < 65536:
        problems.append(f"{path}: [server] port must be an integer 0-65535, not {port!r}")
    workers = server.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        problems.append(f"{path}: [server] workers must be an integer 1-{MAX_WORKERS}, not {workers!r}")
    url = os.environ.get("GSEM_DATABASE_URL") or database.get("url", "sqlite:///gsem.db")
    if not isinstance(url, str) or "://" not in url:
        problems.append(f"{path}: [database] url must be a database URL, not {url!r}")

    def paths(key: str) -> tuple[Path, ...]:
        value = tls.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{path}: [tls] {key} must be a path or a list of paths")
            return ()
        return tuple(_resolve(data_dir, v) for v in value)

    ca_paths = paths("ca")
    crl_paths = paths("crl")
    if not ca_paths:
        problems.append(f"{path}: [tls] ca must name at least one CA certificate file")
    for key in ("cert", "key"):
        if not isinstance(tls.get(key), str):
            problems.append(f"{path}: [tls] {key} must name the hub's server {key} file")

    known = {f for f in Limits.__dataclass_fields__}
    unknown = set(limits_raw) - known
    if unknown:
        problems.append(f"{path}: [limits] unknown settings: {', '.join(sorted(unknown))}")
    limit_values = {}
    for name in known & set(limits_raw):
        value = limits_raw[name]
        if not isinstance(value, (int, float)) or value <= 0:
            problems.append(f"{path}: [limits] {name} must be a positive number, not {value!r}")
        else:
            limit_values[name] = value

    delivery = _delivery_config(path, data_dir, raw.get("delivery", {}), problems)

    if problems:
        raise ConfigError(problems)
    return Config(
        data_dir=data_dir,
        host=server.get("host", "127.0.0.1"),
        port=port,
        workers=workers,
        database_url=_database_url(data_dir, url),
        ca_paths=ca_paths,
        crl_paths=crl_paths,
        server_cert=_resolve(data_dir, tls["cert"]),
        server_key=_resolve(data_dir, tls["key"]),
        limits=Limits(**limit_values),
        delivery=delivery,
    )


def _delivery_config(path: Path, data_dir: Path, raw: object, problems: list[str]) -> DeliveryConfig:
    if not isinstance(raw, dict):
        problems.append(f"{path}: [delivery] must be a table")
        return DeliveryConfig(node_id=default_node_id(data_dir))
    known = set(DeliveryConfig.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        problems.append(f"{path}: [delivery] unknown settings: {', '.join(sorted(unknown))}")
    values: dict[str, object] = {}
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"{path}: [delivery] enabled must be true or false, not {enabled!r}")
    else:
        values["enabled"] = enabled
    node_id = raw.get("node_id", "")
    if not isinstance(node_id, str) or len(node_id) > 100:
        problems.append(f"{path}: [delivery] node_id must be text of at most 100 characters, not {node_id!r}")
    else:
        values["node_id"] = node_id.strip() or default_node_id(data_dir)
    for name in ("poll_interval", "lease_seconds"):
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"{path}: [delivery] {name} must be a positive number of seconds, not {value!r}")
            else:
                values[name] = float(value)
    if "concurrency" in raw:
        value = raw["concurrency"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{path}: [delivery] concurrency must be a whole number of at least 1, not {value!r}")
        else:
            values["concurrency"] = value
    return DeliveryConfig(**values)  # type: ignore[arg-type]


def render_config(*, host: str = "127.0.0.1", port: int = 8443,
                  database_url: str = "sqlite:///gsem.db") -> str:
    """The text of a new ``gsem.toml`` as ``gsem init`` writes it."""
    limits = Limits()
    delivery = DeliveryConfig()
    return f"""\
# gsem engine configuration. Relative paths are relative to this directory.

[server]
host = "{host}"
port = {port}
# Processes serving the port; set it to the number of cores for throughput (one Python
# process uses one core). Each process keeps its own connections-per-partner count.
workers = 1

[database]
# SQLite file in this directory by default; a PostgreSQL URL looks like
# "postgresql+psycopg://user:password@127.0.0.1:5432/gsem". GSEM_DATABASE_URL overrides it.
url = "{database_url}"

[tls]
ca = ["certs/ca-cert.pem"]      # CAs that issue partner client certificates
crl = ["certs/crl.pem"]         # revocation lists, re-read when they change
cert = "certs/hub-cert.pem"     # the hub's server certificate
key = "certs/hub-key.pem"

[limits]
max_body_bytes = {limits.max_body_bytes}
max_depth = {limits.max_depth}
max_elements = {limits.max_elements}
handshake_timeout = {limits.handshake_timeout}
idle_timeout = {limits.idle_timeout}
max_connections_per_partner = {limits.max_connections_per_partner}

[delivery]
# Forward accepted transactions to push, spool and adapter partners (SPEC §7).
enabled = {str(delivery.enabled).lower()}
# Names this node's leases; nodes sharing a database need different ids. Default: this
# host's name and a hash of this directory's path.
# node_id = "hub-1"
poll_interval = {delivery.poll_interval}     # seconds between looks for due deliveries
lease_seconds = {delivery.lease_seconds}    # how long a claimed delivery stays this node's
concurrency = {delivery.concurrency}        # deliveries in flight at once
"""
