"""Real HTTP peers for the HTTP output's tests: a recording API server and nginx.

:class:`Recorder` is the API behind the proxy: a ``http.server`` in a thread
on loopback that takes POSTs of the bodies relay sends (ndjson, JSON array,
``_bulk``, Loki push; gzip or not), records every JSON record and the
``seq=<n>`` of its message, and answers as Elasticsearch's ``_bulk`` does
when asked. It can be told to refuse for a while (``refuse(429)``): refused
requests are not recorded, as a real API takes nothing it refuses.

:class:`Nginx` is Debian's nginx, started per test with its own prefix
directory, config, pid file and error log, ``daemon off``, on a free port:
TLS with a client-certificate check, a bearer-token check that answers 401,
``client_max_body_size`` (413), proxying to the recorder (502 when it is
down). :meth:`Nginx.set_body_limit` rewrites the config and reloads it.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from tests.certs import CertFiles
from tests.interop.peers import (
    LOOPBACK,
    StartStop,
    free_port,
    log_tail,
    require_program,
    wait_for_tcp,
)
from tests.waiting import wait_until

_SEQ = re.compile(r"seq=(\d+)")


class Recorder(StartStop):
    """The API: records what it takes; see the module docstring."""

    def __init__(self, port: int = 0, *, body: str = "ndjson") -> None:
        self.body = body
        self.seqs: collections.Counter[int] = collections.Counter()
        self.records: list[dict[str, Any]] = []  # the first 50 of each input, to look at
        self.requests = 0  # requests taken
        self.refused = 0  # requests refused (refuse())
        self.max_body = 0  # largest body taken, as sent (gzip or not)
        self.gzipped = 0  # requests that came gzip-encoded
        self.authorization: set[str] = set()
        self.bulk_refuse: dict[int, int] = {}  # seq -> item status to answer, once
        self._refuse: tuple[int, int] | None = None  # (status, how many more; -1: until told)
        self._lock = threading.Lock()
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                status, answer, headers = recorder.take(self.headers, data)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def refuse(self, status: int, count: int = -1) -> None:
        """Answer ``status`` (with Retry-After: 1 for 429/503) to the next ``count``
        requests (-1: until :meth:`accept`)."""
        with self._lock:
            self._refuse = (status, count)

    def accept(self) -> None:
        with self._lock:
            self._refuse = None

    def take(self, headers: Any, data: bytes) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            if self._refuse is not None:
                status, count = self._refuse
                if count != 0:
                    self._refuse = (status, count - 1) if count > 0 else self._refuse
                    self.refused += 1
                    extra = {"Retry-After": "1"} if status in (429, 503) else {}
                    return status, b'{"error":"refused by the test"}', extra
            self.max_body = max(self.max_body, len(data))
            if headers.get("Content-Encoding") == "gzip":
                self.gzipped += 1
                data = gzip.decompress(data)
            self.authorization.add(headers.get("Authorization", ""))
            records = self._records(data)
            items: list[dict[str, dict[str, Any]]] = []
            for record in records:
                seq = _seq(record)
                status = self.bulk_refuse.pop(seq, 201) if seq is not None else 201
                items.append({"create": {"_index": "x", "status": status}})
                if status >= 300:
                    continue
                if seq is not None:
                    self.seqs[seq] += 1
                source = record.get("input")
                if sum(1 for r in self.records if r.get("input") == source) < 50:
                    self.records.append(record)
            self.requests += 1
            errors = any(item["create"]["status"] >= 300 for item in items)
            if self.body == "es_bulk":
                answer = json.dumps({"took": 1, "errors": errors, "items": items}).encode()
                return 200, answer, {}
            return 200, b"{}", {}

    def _records(self, data: bytes) -> list[dict[str, Any]]:
        if self.body == "json_array":
            return list(json.loads(data))
        if self.body == "loki":
            doc = json.loads(data)
            return [json.loads(v[1]) for s in doc["streams"] for v in s["values"]]
        lines = [json.loads(line) for line in data.splitlines() if line]
        if self.body == "es_bulk":
            actions, records = lines[0::2], lines[1::2]
            assert all("create" in a and a["create"]["_index"] for a in actions), actions[:3]
            return records
        return lines

    def counted(self) -> int:
        with self._lock:
            return len(self.seqs)


def _seq(record: dict[str, Any]) -> int | None:
    found = _SEQ.search(str(record.get("message", "")))
    return int(found.group(1)) if found else None


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_body_buffer_size 1m;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        client_max_body_size {body_limit};
        location /v1/ingest {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            proxy_pass http://{host}:{backend}/ingest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class Nginx(StartStop):
    """nginx as the test starts it: see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        server: CertFiles,
        backend: int,
        token: str,
        body_limit: str = "10m",
        port: int = 0,
    ) -> None:
        self.binary = require_program("nginx", "nginx")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.backend = backend
        self.token = token
        self.body_limit = body_limit
        self.port = port or free_port()
        self.conf = directory / "nginx.conf"
        self.error_log = directory / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/v1/ingest"

    def write_conf(self) -> None:
        self.conf.write_text(
            NGINX_CONF.format(
                dir=self.directory,
                host=LOOPBACK,
                port=self.port,
                cert=self.server.cert,
                key=self.server.key,
                ca=self.server.ca,
                body_limit=self.body_limit,
                token=self.token,
                backend=self.backend,
            )
        )

    def start(self) -> Self:
        self.write_conf()
        self.process = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.directory),
                "-c",
                str(self.conf),
                "-e",
                str(self.error_log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # it logs to error.log (-e)
        )
        wait_for_tcp(LOOPBACK, self.port, 10, process=self.process, log_path=self.error_log)
        return self

    def set_body_limit(self, limit: str) -> None:
        """Rewrite the config with ``limit`` and reload it (SIGHUP to its pid);
        waits until the reload is done (the error log says so)."""
        assert self.process is not None
        self.body_limit = limit
        self.write_conf()
        before = self._reloads()
        self.process.send_signal(signal.SIGHUP)
        wait_until(lambda: self._reloads() > before, 10, message=lambda: log_tail(self.error_log))

    def _reloads(self) -> int:
        try:
            return self.error_log.read_text().count("reconfiguring")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        """SIGTERM by pid (fast shutdown: open requests are cut), then wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
