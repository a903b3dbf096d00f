"""``make serve``: the champion behind MLflow's own scoring server, following the ``champion`` alias.

How it follows the alias: a **rolling restart behind a small front**. MLflow's scoring server
(``mlflow models serve``) has no reload endpoint, and swapping the model inside a running server would mean our own
server instead of MLflow's. So this supervisor

1. listens on ``serving.host:serving.port`` with a thin HTTP front (stdlib, threaded) that forwards every request
   to the current scoring server;
2. reads the alias every ``serving.poll_seconds`` (20 s by default, so a move is followed well within a minute);
3. when the alias moved, starts ``mlflow models serve -m models:/<name>/<version>`` on the other of two backend
   ports (``serving.backend_port`` and the next one), waits until it answers ``/ping`` and a warm-up
   ``/invocations``, then switches the front to it: a new request goes to the new server from then on;
4. lets the old server finish what it is doing (the front counts in-flight requests per backend; at most
   ``serving.drain_seconds``) and only then stops it.

No request in flight is dropped, and a version that does not start (a broken artifact) leaves the old one serving;
it is retried at the next poll. A scoring server that dies is started again.

The served model captures predictions (:mod:`pipelines.serving`): this module exports the capture settings to the
scoring server as ``MLOPS_SERVING__*`` variables, and ``MLOPS_SERVED_MODEL_VERSION``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.io.storage import is_s3

if TYPE_CHECKING:
    from pipelines.config import Settings

log = logging.getLogger(__name__)

#: Longest wait for a stopped scoring server's processes to exit (uvicorn's graceful shutdown, the capture flush).
STOP_TIMEOUT_SECONDS = 20
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def serve_command(model_uri: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow models serve`` command line for ``model_uri`` on loopback ``port`` (this environment)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        str(workers),
    ]


@dataclass
class Backend:
    version: str
    port: int
    proc: subprocess.Popen
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def capture_uri(settings: Settings) -> str:
    """Where the served model writes captures: ``serving.capture_uri`` or ``<artifact_root>/captures``."""
    uri = settings.serving.capture_uri or settings.uri("captures")
    return uri if is_s3(uri) else str(Path(uri).resolve())


def server_env(settings: Settings, version: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The scoring server's environment: MLflow stores, capture settings, the version being served."""
    env = dict(os.environ if base is None else base)
    cfg = settings.serving
    env.update(
        {
            "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
            "MLOPS_SERVED_MODEL_VERSION": str(version),
            "MLOPS_SERVING__CAPTURE_SHARE": str(cfg.capture_share),
            "MLOPS_SERVING__CAPTURE_TEXTS": str(cfg.capture_texts).lower(),
            "MLOPS_SERVING__CAPTURE_QUEUE_SIZE": str(cfg.capture_queue_size),
            "MLOPS_SERVING__CAPTURE_FLUSH_ROWS": str(cfg.capture_flush_rows),
            "MLOPS_SERVING__CAPTURE_FLUSH_SECONDS": str(cfg.capture_flush_seconds),
            "MLOPS_SERVING__CAPTURE_URI": capture_uri(settings),
        }
    )
    # mlflow models serve execs ``uvicorn`` by name: this interpreter's scripts folder first (a venv not activated).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if settings.mlflow.registry_uri:
        env["MLFLOW_REGISTRY_URI"] = settings.mlflow.registry_uri
    if cfg.capture_share <= 0:
        env.pop("MLOPS_SERVING__CAPTURE_URI")
    return env


#: The warm-up prediction before a switch; ``capture: false`` keeps it out of the captures (a model saved before
#: that param existed ignores it, with a warning in its log).
WARM_UP = {"inputs": ["warm-up"], "params": {"capture": False}}


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies, which nobody may reap here, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _post_json(url: str, payload: dict[str, Any], timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Supervisor:
    """Runs the front and one (during a switch, two) scoring servers; see the module doc.

    Args:
        settings: the product settings (``serving``, ``mlflow``, ``registry``).
        model_uri_for: the model URI of a version (tests point it elsewhere); default ``models:/<name>/<version>``.
        current_version: a callable returning the version that should serve, or None (default: the alias).
    """

    def __init__(self, settings: Settings, current_version: Any = None, model_uri_for: Any = None) -> None:
        self.settings = settings
        self.name = settings.registry.model_name
        self._current_version = current_version or self._alias_version
        self._model_uri_for = model_uri_for or (lambda v: f"models:/{self.name}/{v}")
        self.active: Backend | None = None
        self._switch_lock = threading.Lock()
        self._stop = threading.Event()
        self._front: ThreadingHTTPServer | None = None
        self.switches: list[dict[str, Any]] = []

    # --- the alias -----------------------------------------------------------------------------------
    def _alias_version(self) -> str | None:
        from pipelines.champion import champion_version  # not at the top: pipelines.champion loads mlflow

        mv = champion_version(self.settings)
        return str(mv.version) if mv is not None else None

    # --- backends ------------------------------------------------------------------------------------
    def _port(self) -> int:
        """The backend port the active server does not hold (after a failed start too)."""
        base = self.settings.serving.backend_port
        active = self.active
        return base + 1 if active is not None and active.port == base else base

    def start_backend(self, version: str) -> Backend:
        """Start a scoring server for ``version`` and wait until it answers a prediction.

        Raises:
            RuntimeError: it exited or did not answer within ``serving.start_timeout_seconds``.
        """
        port = self._port()
        cmd = serve_command(self._model_uri_for(version), port, self.settings.serving.workers)
        log.info("serve: starting version %s on port %d", version, port)
        proc = subprocess.Popen(cmd, env=server_env(self.settings, version), start_new_session=True)
        backend = Backend(version=version, port=port, proc=proc)
        deadline = time.monotonic() + self.settings.serving.start_timeout_seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the scoring server for version {version} exited with code {proc.returncode}")
            try:
                if _get(backend.url + "/ping") == 200:
                    status, body = _post_json(backend.url + "/invocations", WARM_UP)
                    if status == 200:
                        return backend
                    raise RuntimeError(f"version {version} answered the warm-up with HTTP {status}: {body[:200]!r}")
            except OSError:
                pass
            time.sleep(0.5)
        self.stop_backend(backend, drain=0)
        raise RuntimeError(
            f"the scoring server for version {version} did not answer within "
            f"{self.settings.serving.start_timeout_seconds:.0f}s (serving.start_timeout_seconds)"
        )

    def stop_backend(self, backend: Backend, drain: float | None = None) -> None:
        """Wait for ``backend``'s in-flight requests (at most ``drain`` s), then stop it (SIGTERM, then SIGKILL).

        Returns once every process of its group has exited (the uvicorn worker writes its last captures at exit),
        at most ``STOP_TIMEOUT_SECONDS`` after the SIGTERM.
        """
        drain = self.settings.serving.drain_seconds if drain is None else drain
        deadline = time.monotonic() + drain
        while backend.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if backend.in_flight > 0:
            log.warning(
                "serve: version %s still has %d request(s) after %.0fs", backend.version, backend.in_flight, drain
            )
        pgid = backend.proc.pid  # start_new_session: the group of the mlflow CLI, uvicorn and its workers
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while (backend.proc.poll() is None or group_alive(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if backend.proc.poll() is None or group_alive(pgid):
            log.warning("serve: version %s did not stop within %ds; killing it", backend.version, STOP_TIMEOUT_SECONDS)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            backend.proc.wait(timeout=10)
        log.info("serve: stopped version %s on port %d", backend.version, backend.port)

    def sync(self) -> str | None:
        """One poll: follow the alias (rolling restart) or restart a dead server. Returns the active version."""
        with self._switch_lock:
            wanted = self._current_version()
            active = self.active
            if wanted is None:
                if active is None:
                    log.warning("serve: %s has no champion yet; waiting", self.name)
                return active.version if active else None
            if active is not None and active.version == wanted and active.proc.poll() is None:
                return wanted
            if active is not None and active.proc.poll() is not None:
                log.error(
                    "serve: the scoring server of version %s died (code %s)", active.version, active.proc.returncode
                )
            try:
                new = self.start_backend(wanted)
            except Exception as exc:
                log.error(
                    "serve: version %s did not start (%s); %s",
                    wanted,
                    exc,
                    f"version {active.version} keeps serving" if active else "nothing is served",
                )
                return active.version if active else None
            self.active = new  # from here on every new request goes to the new server
            self.switches.append({"from": active.version if active else None, "to": wanted, "at": time.time()})
            log.info("serve: now serving version %s (was %s)", wanted, active.version if active else None)
        if active is not None:
            threading.Thread(target=self.stop_backend, args=(active,), daemon=True).start()
        return wanted

    # --- the front -----------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        supervisor = self

        class Front(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                log.debug("front: " + format, *args)

            def _forward(self) -> None:
                if self.path == "/mlops/status":
                    active = supervisor.active
                    body = json.dumps(
                        {
                            "model": supervisor.name,
                            "version": active.version if active else None,
                            "switches": supervisor.switches,
                        }
                    ).encode()
                    return self._reply(200, body, "application/json")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                backend = supervisor.active
                if backend is None:
                    return self._reply(503, b'{"error": "no champion is served yet"}', "application/json")
                with backend.lock:
                    backend.in_flight += 1
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=300)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                except OSError as exc:
                    return self._reply(
                        502, json.dumps({"error": f"scoring server: {exc}"}).encode(), "application/json"
                    )
                finally:
                    with backend.lock:
                        backend.in_flight -= 1
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP_HEADERS | {"content-length", "date", "server"}:  # sent by the front
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Model-Version", backend.version)
                self.end_headers()
                self.wfile.write(data)

            def _reply(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _forward  # noqa: N815 - http.server's names

        return Front

    def start_front(self) -> str:
        cfg = self.settings.serving
        ThreadingHTTPServer.daemon_threads = True
        self._front = ThreadingHTTPServer((cfg.host, cfg.port), self._handler())
        threading.Thread(target=self._front.serve_forever, name="serve-front", daemon=True).start()
        host, port = self._front.server_address[:2]
        return f"http://{host}:{port}"

    def banner(self, url: str) -> list[str]:
        """What ``make serve`` prints: the URL, a curl example, where captures go."""
        return [
            f"serving models:/{self.name}@champion at {url} (the alias is read every "
            f"{self.settings.serving.poll_seconds:.0f}s; captures go to {capture_uri(self.settings)})",
            f"  curl -s {url}/invocations -H 'Content-Type: application/json' "
            '-d \'{"inputs": ["This medicine worked well for me"]}\'',
            f"  curl -s {url}/mlops/status    # the version being served, and the switches so far",
        ]

    def run(self, announce: Any = None) -> None:
        """Serve until SIGINT/SIGTERM: the front, then a poll of the alias every ``serving.poll_seconds``.

        ``announce`` gets each line of :meth:`banner` (the CLI prints them).
        """
        url = self.start_front()
        for line in self.banner(url):
            (announce or log.info)(line)
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        try:
            while not self._stop.is_set():
                self.sync()
                self._stop.wait(self.settings.serving.poll_seconds)
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        if self._front is not None:
            self._front.shutdown()
            self._front.server_close()
        if self.active is not None:
            self.stop_backend(self.active)
            self.active = None
