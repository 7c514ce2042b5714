"""A real gsem hub in a subprocess, and real clients to talk to it.

:class:`RunningHub` does what an operator does: ``gsem init DIR --demo`` (a real
subprocess), then ``gsem --data-dir DIR serve --port 0``, waiting for the "serving" line
on standard error.  Partners talk to it the way a partner's CHS would: ``curl`` with a
client certificate (:meth:`RunningHub.post`), or a persistent HTTPS connection made with
Python's ``ssl`` (:class:`PersistentClient`) where hundreds of requests must be fast.
Operators' views come from the ``gsem`` command line (:meth:`RunningHub.gsem`) and, for
what the CLI does not print, from the database itself (:meth:`RunningHub.query`).

The server's standard output (one JSON line per acknowledgement) and standard error are
written to files in the data directory, one pair per run, so that nothing blocks on a
full pipe and a test can look for tracebacks afterwards.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from lxml import etree
from sqlalchemy.pool import NullPool

from gsem.config import load_config

#: The fixtures of one incident's lifecycle (tests/fixtures/lifecycle, its README).
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle"
#: (file, sender, state after it), in the order they must be sent.
LIFECYCLE = [
    ("01-service-request.xml", "ACME", "Beginning_State"),
    ("02-entitlement.xml", "GLOBEX", "Entitled"),
    ("03-problem-submittal.xml", "ACME", "Problem_Submitted"),
    ("04-accept-problem.xml", "GLOBEX", "Open_Provider"),
    ("05-request-problem-information.xml", "GLOBEX", "Open_Requester"),
    ("06-provide-problem-information.xml", "ACME", "Open_Provider"),
    ("07-problem-resolution.xml", "GLOBEX", "Closed_Pending_Confirmation"),
    ("08-confirm-close.xml", "ACME", "Closed"),
    ("09-query-incident.xml", "ACME", "Closed"),
]
#: Who receives what each demo partner sends.
COUNTERPARTY = {"ACME": "GLOBEX", "GLOBEX": "ACME"}

__all__ = [
    "sigint_as_in_a_terminal",
    "CURL",
    "GSEM",
    "TRANSACTIONS_PATH",
    "ClientIdentity",
    "CurlResult",
    "HandshakeRefused",
    "HubError",
    "PersistentClient",
    "RunningHub",
    "ack_codes",
    "ack_text",
]

CURL = shutil.which("curl")
#: The ``gsem`` console script of the interpreter running the tests (the project's venv).
GSEM = str(Path(sys.executable).with_name("gsem"))
TRANSACTIONS_PATH = "/sis/v1/transactions"
_SERVING = re.compile(rb"gsem: serving https://([^:/]+):(\d+)/sis/v1/transactions")
#: How long a server may take to print its "serving" line.
START_TIMEOUT = 30.0
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


class HubError(AssertionError):
    """The hub or one of its commands did not behave (with its output, for the report)."""


class HandshakeRefused(HubError):
    """curl got no HTTP response at all: the connection was refused or cut in TLS."""


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate and its key, as files curl and ``ssl`` can load."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CurlResult:
    """What one curl run saw."""

    returncode: int
    http_status: int  # 0 when no HTTP response arrived
    body: bytes
    stderr: str
    seconds: float
    bytes_sent: int  # of the request body, as curl counted it (%{size_upload})

    @property
    def ack(self) -> etree._Element | None:
        """The body parsed as XML (an ACKNOWLEDGEMENT), or None when there is none."""
        if not self.body.strip():
            return None
        return etree.fromstring(self.body, _PARSER)


def ack_text(ack: etree._Element, tag: str) -> str:
    """The text of a direct child of an ACKNOWLEDGEMENT ('' when empty or absent)."""
    return (ack.findtext(tag) or "").strip()


def ack_codes(ack: etree._Element) -> list[str]:
    """The ``ERROR/@code`` values of an ACKNOWLEDGEMENT, in order."""
    return [e.get("code") for e in ack.findall("ERROR")]


def sigint_as_in_a_terminal() -> None:
    """In a child before exec: SIGINT at its default, as for a command typed in a terminal.

    A test suite started in the background (a CI script, ``make test &``) inherits SIGINT
    ignored, and so would every gsem it starts; then Ctrl-C cannot be tested.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    # The data directory's gsem.toml is the only configuration a test hub may use.
    for name in ("GSEM_DATABASE_URL", "GSEM_DATA_DIR"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RunningHub:
    """A gsem data directory made by ``gsem init --demo`` and a ``gsem serve`` process on it.

    Use :meth:`create` (or the ``hub`` fixtures); :meth:`stop` when done.
    """

    def __init__(self, data_dir: Path, *, serve_args: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir)
        #: more arguments for every ``gsem serve`` of this hub (e.g. ``--workers 2``)
        self.serve_args = list(serve_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.runs = 0
        self.stdout_paths: list[Path] = []
        self.stderr_paths: list[Path] = []
        self._engine: sa.Engine | None = None
        self._files = tempfile.mkdtemp(prefix="bodies-", dir=self.data_dir.parent)

    # -- making and running --------------------------------------------------------------

    @classmethod
    def create(cls, data_dir: Path, *, database_url: str | None = None,
               limits: Mapping[str, float] | None = None, start: bool = True,
               serve_args: Sequence[str] = ()) -> RunningHub:
        """``gsem init DATA_DIR --demo`` then, with *start*, ``gsem serve --port 0``.

        *limits* overrides settings of the ``[limits]`` section of ``gsem.toml``;
        *serve_args* are added to every ``gsem serve`` (e.g. ``["--workers", "2"]``).
        """
        args = ["init", str(data_dir), "--demo", "--port", "0"]
        if database_url is not None:
            args += ["--database-url", database_url]
        done = subprocess.run([GSEM, *args], capture_output=True, env=_clean_env(), timeout=60)
        if done.returncode != 0:
            raise HubError(f"gsem init failed ({done.returncode}):\n{done.stdout.decode()}{done.stderr.decode()}")
        hub = cls(data_dir, serve_args=serve_args)
        if limits:
            hub.set_limits(limits)
        if start:
            hub.start()
        return hub

    def set_limits(self, limits: Mapping[str, float]) -> None:
        """Rewrite settings of ``[limits]`` in ``gsem.toml`` (read when the server starts)."""
        config = self.data_dir / "gsem.toml"
        text = config.read_text("utf-8")
        for name, value in limits.items():
            text, count = re.subn(rf"(?m)^{re.escape(name)} = .*$", f"{name} = {value}", text)
            if count != 1:
                raise HubError(f"gsem.toml has no [limits] {name} line to change")
        config.write_text(text, "utf-8")

    def start(self, *, port: int = 0) -> None:
        """Run ``gsem serve`` and wait until it is listening."""
        if self.running:
            raise HubError("the hub is already running")
        self.runs += 1
        out = self.data_dir / f"serve-{self.runs}.stdout.log"
        err = self.data_dir / f"serve-{self.runs}.stderr.log"
        self.stdout_paths.append(out)
        self.stderr_paths.append(err)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                [GSEM, "--data-dir", str(self.data_dir), "serve", "--port", str(port), *self.serve_args],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=_clean_env(),
                preexec_fn=sigint_as_in_a_terminal,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            found = _SERVING.search(err.read_bytes())
            if found:
                self.host, self.port = found.group(1).decode(), int(found.group(2))
                return
            if self.process.poll() is not None:
                raise HubError(f"gsem serve exited with {self.process.returncode} before serving:\n"
                               + err.read_text("utf-8", "replace"))
            if time.monotonic() > deadline:
                self.kill(signal.SIGKILL)
                raise HubError(f"gsem serve did not print its serving line within {START_TIMEOUT:g} s:\n"
                               + err.read_text("utf-8", "replace"))
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def kill(self, sig: int = signal.SIGKILL, *, timeout: float = 15.0) -> int:
        """Send *sig* to the server and wait for it to exit; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def restart(self, *, same_port: bool = True) -> None:
        """Start the server again on the same data directory (after a kill, or stopping it)."""
        if self.running:
            self.kill(signal.SIGTERM)
        self.start(port=self.port if same_port else 0)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and close database connections."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.kill(signal.SIGTERM, timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        shutil.rmtree(self._files, ignore_errors=True)

    # -- what the server wrote --------------------------------------------------------------

    def stderr_text(self) -> str:
        """Everything the server wrote on standard error, every run."""
        return "".join(p.read_text("utf-8", "replace") for p in self.stderr_paths if p.exists())

    def stdout_lines(self) -> list[str]:
        """The acknowledgement log lines of every run."""
        return [line for p in self.stdout_paths if p.exists()
                for line in p.read_text("utf-8", "replace").splitlines()]

    def assert_no_traceback(self) -> None:
        """Fail with the server's standard error if any run logged a Python traceback."""
        text = self.stderr_text()
        if "Traceback" in text:
            raise HubError("the server logged a traceback:\n" + text[-6000:])

    def peak_rss_kib(self) -> int:
        """The server's peak resident memory (VmHWM) so far, in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

    # -- partners' side ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where partners post transactions."""
        return f"https://{self.host}:{self.port}{TRANSACTIONS_PATH}"

    @property
    def certs_dir(self) -> Path:
        """The data directory's development PKI."""
        return self.data_dir / "certs"

    @property
    def ca_cert(self) -> Path:
        """The development CA (issues the hub's and the partners' certificates)."""
        return self.certs_dir / "ca-cert.pem"

    @property
    def ca_key(self) -> Path:
        """The development CA's private key."""
        return self.certs_dir / "ca-key.pem"

    @property
    def crl(self) -> Path:
        """The CRL file the hub checks client certificates against."""
        return self.certs_dir / "crl.pem"

    def identity(self, partner: str | ClientIdentity) -> ClientIdentity:
        """A demo partner's certificate files (``certs/partners/ID-cert.pem``, ``-key.pem``)."""
        if isinstance(partner, ClientIdentity):
            return partner
        return ClientIdentity(self.certs_dir / "partners" / f"{partner}-cert.pem",
                              self.certs_dir / "partners" / f"{partner}-key.pem")

    def curl(self, partner: str | ClientIdentity | None, body: bytes, *, idempotency_key: str | None = None,
             tls: str = "1.3", headers: Sequence[str] = (), body_file: Path | None = None,
             max_time: float = 30.0, path: str = TRANSACTIONS_PATH) -> CurlResult:
        """POST *body* (or the file *body_file*) with curl; returns what curl saw, even a failure.

        *partner* None sends no client certificate.  *tls* "1.2" forces TLS 1.2 only,
        "1.3" TLS 1.3 only.
        """
        assert CURL is not None, "curl is required"
        if body_file is None:
            fd, name = tempfile.mkstemp(dir=self._files, suffix=".xml")
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            body_file = Path(name)
        out = Path(tempfile.mkstemp(dir=self._files, suffix=".ack")[1])
        args = [CURL, "--silent", "--show-error", "--cacert", str(self.ca_cert),
                "--max-time", str(max_time), "--output", str(out), "--write-out", "%{http_code} %{size_upload}",
                "-H", "Content-Type: application/xml", "--data-binary", f"@{body_file}"]
        if tls == "1.2":
            args += ["--tlsv1.2", "--tls-max", "1.2"]
        elif tls == "1.3":
            args += ["--tlsv1.3"]
        else:
            raise ValueError(f"tls must be '1.2' or '1.3', not {tls!r}")
        if partner is not None:
            identity = self.identity(partner)
            args += ["--cert", str(identity.cert), "--key", str(identity.key)]
        if idempotency_key is not None:
            args += ["-H", f"Idempotency-Key: {idempotency_key}"]
        for header in headers:
            args += ["-H", header]
        args.append(f"https://{self.host}:{self.port}{path}")
        started = time.monotonic()
        done = subprocess.run(args, capture_output=True, timeout=max_time + 15)
        seconds = time.monotonic() - started
        status, _, sent = done.stdout.decode().strip().partition(" ")
        result = CurlResult(done.returncode, int(status) if status.isdigit() else 0, out.read_bytes(),
                            done.stderr.decode("utf-8", "replace"), seconds, int(float(sent or 0)))
        out.unlink()
        return result

    def post(self, partner: str | ClientIdentity, body: bytes, *, idempotency_key: str | None = None,
             tls: str = "1.3", **kwargs: Any) -> tuple[int, etree._Element]:
        """POST one document as *partner* with curl; returns (HTTP status, ACKNOWLEDGEMENT).

        Raises :class:`HandshakeRefused` when no HTTP response arrived at all.
        """
        result = self.curl(partner, body, idempotency_key=idempotency_key, tls=tls, **kwargs)
        if result.http_status == 0:
            raise HandshakeRefused(f"curl exit {result.returncode}, no HTTP response: {result.stderr.strip()}")
        ack = result.ack
        if ack is None or ack.tag != "ACKNOWLEDGEMENT":
            raise HubError(f"HTTP {result.http_status} without an ACKNOWLEDGEMENT: {result.body[:500]!r}")
        return result.http_status, ack

    def client(self, partner: str | ClientIdentity, **kwargs: Any) -> PersistentClient:
        """A keep-alive HTTPS client for *partner* (see :class:`PersistentClient`)."""
        return PersistentClient(self, self.identity(partner), **kwargs)

    # -- operators' side --------------------------------------------------------------------

    def gsem(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run ``gsem --data-dir DIR ARGS…``; returns its standard output.

        With *check*, a non-zero exit fails with the command's output.
        """
        done = self.gsem_result(*args, timeout=timeout)
        if check and done.returncode != 0:
            raise HubError(f"gsem {' '.join(args)} exited {done.returncode}:\n"
                           f"{done.stdout.decode()}{done.stderr.decode()}")
        return done.stdout.decode("utf-8", "replace")

    def gsem_result(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run ``gsem --data-dir DIR ARGS…``; returns how it ended (status, output, errors)."""
        return subprocess.run([GSEM, "--data-dir", str(self.data_dir), *args], capture_output=True,
                              env=_clean_env(), timeout=timeout)

    @property
    def database_url(self) -> str:
        """The database the hub uses, as its configuration resolves it."""
        return load_config(self.data_dir).database_url

    @property
    def engine(self) -> sa.Engine:
        """A SQLAlchemy engine on the hub's database (for what the CLI does not show)."""
        if self._engine is None:
            self._engine = sa.create_engine(self.database_url, poolclass=NullPool)
        return self._engine

    def query(self, sql: str, **params: Any) -> list[Mapping[str, Any]]:
        """Run one read-only SQL statement on the hub's database; rows as mappings."""
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(sa.text(sql), params).mappings()]

    def scalar(self, sql: str, **params: Any) -> Any:
        """The single value of a one-row, one-column query."""
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()


class PersistentClient:
    """One keep-alive HTTPS connection with a client certificate (``http.client`` + ``ssl``).

    curl starts a process and a TLS handshake per request; a CHS keeps its connection.
    Connection errors propagate (``OSError``, ``http.client.HTTPException``); the next
    :meth:`post` reconnects.
    """

    def __init__(self, hub: RunningHub, identity: ClientIdentity, *, timeout: float = 10.0) -> None:
        self.hub = hub
        self.timeout = timeout
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(hub.ca_cert))
        self.context.load_cert_chain(str(identity.cert), str(identity.key))
        self.connection: http.client.HTTPSConnection | None = None

    def _connect(self) -> http.client.HTTPSConnection:
        if self.connection is None:
            self.connection = http.client.HTTPSConnection(self.hub.host, self.hub.port, context=self.context,
                                                          timeout=self.timeout)
        return self.connection

    def post(self, body: bytes, *, idempotency_key: str | None = None) -> tuple[int, etree._Element]:
        """POST one document; returns (HTTP status, ACKNOWLEDGEMENT)."""
        connection = self._connect()
        headers = {"Content-Type": "application/xml"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        try:
            connection.request("POST", TRANSACTIONS_PATH, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        return response.status, etree.fromstring(data, _PARSER)

    def close(self) -> None:
        """Drop the connection; the next post makes a new one."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@contextmanager
def running_hub(data_dir: Path, **kwargs: Any) -> Iterator[RunningHub]:
    """A started hub that is stopped, and checked for tracebacks, at the end."""
    hub = RunningHub.create(data_dir, **kwargs)
    try:
        yield hub
    finally:
        hub.stop()
    hub.assert_no_traceback()
