"""The real Request Tracker the RT adapter's tests talk to, and what its people do in it.

``.ci/rt-start`` (run by ``make test``) starts a throw-away RT 5 on 127.0.0.1 and
``GSEM_TEST_RT_URL`` says where; :func:`rt_url` finds it (running ``.ci/rt-start`` itself
when RT is installed but the variable is not set) or gives the reason to skip.
:class:`RtPeople` does what RT's users do, over REST 2.0 as they would through the web
UI: ``alice`` takes, replies, comments, resolves.  :class:`PrivateRt` is a second RT
server on a copy of the test database, which a test may stop and start again.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "RT_URL_VARIABLE",
    "ADMIN",
    "HUB_USER",
    "AGENT",
    "rt_url",
    "RtPeople",
    "PrivateRt",
    "free_port",
]

RT_URL_VARIABLE = "GSEM_TEST_RT_URL"
#: (user, password) of the users .ci/rt-start puts in the test database.
ADMIN = ("root", "password")
HUB_USER = ("gsem", "gsem-password")
AGENT = ("alice", "alice-password")
REPO = Path(__file__).resolve().parents[2]
RT_SERVER = Path("/usr/share/request-tracker5/libexec/rt-server")
RT_DIR = Path(os.environ.get("GSEM_RT_DIR", "/tmp/gsem-rt"))


def _answers(url: str, timeout: float = 5.0) -> bool:
    request = urllib.request.Request(url.rstrip("/") + "/REST/2.0/rt", headers=_auth_header(ADMIN))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def rt_url() -> tuple[str | None, str]:
    """(RT's base URL, '') when a test RT answers, else (None, why not)."""
    url = os.environ.get(RT_URL_VARIABLE)
    if url is None:
        if not RT_SERVER.exists():
            return None, (f"{RT_URL_VARIABLE} is not set and Request Tracker 5 is not installed; "
                          "'make test' installs and starts it with .ci/rt-start")
        started = time.monotonic()
        done = subprocess.run(["bash", str(REPO / ".ci" / "rt-start")], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            return None, f".ci/rt-start failed: {done.stderr.strip()[-500:]}"
        url = done.stdout.strip()
        print(f"rt-start: RT ready at {url} in {time.monotonic() - started:.1f} s")
    if not url:
        return None, os.environ.get("GSEM_TEST_RT_SKIP_REASON") or ".ci/rt-start could not start RT"
    if not _answers(url):
        return None, f"{RT_URL_VARIABLE}={url} does not answer REST 2.0 with the test credentials"
    return url, ""


def _auth_header(user: tuple[str, str]) -> dict[str, str]:
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class RtPeople:
    """RT's users at work, over REST 2.0 (blocking calls: RT is a separate process)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/REST/2.0"

    def call(self, method: str, path: str, body: Any = None, *, user: tuple[str, str] = AGENT,
             params: str = "") -> Any:
        """One REST call as *user*; the decoded answer (raises for an HTTP error)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**_auth_header(user), "Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path + params, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None

    def make_queue(self, name: str, fields: Any) -> None:
        """Queue *name* with the single-value free-form ticket custom fields *fields*."""
        queue = self.call("POST", "/queue", {"Name": name, "Lifecycle": "default"}, user=ADMIN)
        for field in fields:
            self.call("POST", "/customfield", {"Name": field, "Type": "FreeformSingle", "Queue": queue["id"],
                                               "LookupType": "RT::Queue-RT::Ticket"}, user=ADMIN)

    def ticket(self, ticket_id: int) -> dict[str, Any]:
        """The ticket as REST 2.0 shows it, with ``cf`` (name -> first value) added."""
        data = self.call("GET", f"/ticket/{ticket_id}", user=ADMIN)
        data["cf"] = {cf["name"]: (cf["values"][0] if cf["values"] else "") for cf in data["CustomFields"]}
        return data

    def tickets(self, queue: str) -> list[int]:
        """The ids of every ticket in *queue*."""
        query = urllib.parse.quote(f"Queue = '{queue}'")
        data = self.call("GET", "/tickets", user=ADMIN, params=f"?query={query}&per_page=100")
        return [int(item["id"]) for item in data["items"]]

    def history(self, ticket_id: int) -> list[dict[str, Any]]:
        """The ticket's transactions: Type, Creator (name), Field, NewValue, Data."""
        data = self.call("GET", f"/ticket/{ticket_id}/history", user=ADMIN,
                         params="?per_page=100&fields=Type,Creator,Field,OldValue,NewValue,Data")
        for item in data["items"]:
            item["Creator"] = item["Creator"]["id"]
        return data["items"]

    def attachment_names(self, ticket_id: int) -> list[str]:
        """The file names of every attachment of the ticket."""
        data = self.call("GET", f"/ticket/{ticket_id}/attachments", user=ADMIN,
                         params="?per_page=100&fields=Filename")
        return [item["Filename"] for item in data["items"] if item.get("Filename")]

    def take(self, ticket_id: int, user: tuple[str, str] = AGENT) -> None:
        """*user* makes himself the owner (the web UI's "Take")."""
        self.call("PUT", f"/ticket/{ticket_id}", {"Owner": user[0]}, user=user)

    def reply(self, ticket_id: int, text: str, user: tuple[str, str] = AGENT,
              attachments: list[tuple[str, str, bytes]] = ()) -> None:
        """*user* replies on the ticket (correspondence)."""
        body: dict[str, Any] = {"Content": text, "ContentType": "text/plain"}
        if attachments:
            body["Attachments"] = [{"FileName": n, "FileType": t, "FileContent": base64.b64encode(d).decode()}
                                   for n, t, d in attachments]
        self.call("POST", f"/ticket/{ticket_id}/correspond", body, user=user)

    def comment(self, ticket_id: int, text: str, user: tuple[str, str] = AGENT) -> None:
        """*user* writes an internal comment on the ticket."""
        self.call("POST", f"/ticket/{ticket_id}/comment", {"Content": text, "ContentType": "text/plain"},
                  user=user)

    def set_status(self, ticket_id: int, status: str, user: tuple[str, str] = AGENT) -> None:
        """*user* sets the ticket's status (resolved, open, …)."""
        self.call("PUT", f"/ticket/{ticket_id}", {"Status": status}, user=user)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRt:
    """A second RT server, on a copy of the test database, that a test stops and starts.

    The copy is made with SQLite's online backup (the shared server may be writing), so
    it has the same users; its configuration is the shared one with another port.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "RT_SiteConfig.d").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        source = sqlite3.connect(RT_DIR / "rtdb")
        target = sqlite3.connect(self.dir / "rtdb")
        with target:
            source.backup(target)
        source.close()
        target.close()
        config = (RT_DIR / "RT_SiteConfig.pm").read_text()
        shared_port = (RT_DIR / "port").read_text().strip()
        config = config.replace(str(RT_DIR / "rtdb"), str(self.dir / "rtdb")).replace(shared_port, str(self.port))
        (self.dir / "RT_SiteConfig.pm").write_text(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @staticmethod
    def possible() -> bool:
        """Whether there is a .ci/rt-start instance to copy and an rt-server to run."""
        return RT_SERVER.exists() and (RT_DIR / "rtdb").exists() and (RT_DIR / "RT_SiteConfig.pm").exists()

    def start(self, timeout: float = 120.0) -> float:
        """Run rt-server and wait until REST answers; the seconds it took."""
        started = time.monotonic()
        self.runs += 1
        env = {**os.environ, "RT_SITE_CONFIG": str(self.dir / "RT_SiteConfig.pm"),
               "RT_SITE_CONFIG_DIR": str(self.dir / "RT_SiteConfig.d")}
        with open(self.dir / f"server-{self.runs}.log", "wb") as log:
            self.process = subprocess.Popen(
                [str(RT_SERVER), "--port", str(self.port), "--host", "127.0.0.1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        while not _answers(self.url, timeout=2):
            if self.process.poll() is not None:
                raise RuntimeError(f"rt-server exited: {(self.dir / f'server-{self.runs}.log').read_text()[-2000:]}")
            if time.monotonic() - started > timeout:
                self.stop()
                raise RuntimeError(f"rt-server did not answer within {timeout:g} s")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the server (its whole process group: Starlet forks workers)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass
        self.process = None

    def remove(self) -> None:
        """Stop it and delete its files."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
