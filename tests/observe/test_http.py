"""/metrics over HTTP, parsed with prometheus_client's own parser, and the HTTP side's access
rules (loopback, the token, the Host and Origin checks)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.support import HOST, child_env
from tests.web.support import web_daemon

LAYERS = ("tcpip", "im0", "nic0")


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET without following redirects: (status, headers, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kw: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def upgrade(url: str, origin: str) -> int:
    """The status of a WebSocket handshake on `/ws` sent with `origin`."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
            ).encode()
        )
        return int(sock.recv(4096).split(b" ", 2)[1])


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no {sample}{labels} in {family}")


def test_metrics_scraped_over_http_parse_and_move(tmp_path: Path) -> None:
    with web_daemon(tmp_path) as w, w.client() as c:
        conn = c.tcp_connect(HOST, w.peer_port)
        for _ in range(5):
            assert c.tcp_send(conn, b"m" * 1000) == 1000
            assert c.tcp_recv(conn, 1000, 10_000)
        time.sleep(0.5)  # a few hop-latency probes
        status, headers, body = fetch(w.metrics_url)
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        fams = families(text)
        # HELP and TYPE for every family
        for name, fam in fams.items():
            assert fam.documentation, name
            exposed = f"{name}_total" if fam.type == "counter" else name
            assert f"# TYPE {exposed} {fam.type}" in text
            assert f"# HELP {exposed} " in text
        for layer in LAYERS:
            assert (
                value(fams, "chimney_offloads_active", "chimney_offloads_active", layer=layer) > 0
            )
            assert value(fams, "chimney_handles", "chimney_handles", layer=layer) > 0
            assert value(fams, "chimney_inbox_depth", "chimney_inbox_depth", layer=layer) >= 0
            assert fams["chimney_hop_latency_seconds"].type == "histogram"
            count = value(
                fams,
                "chimney_hop_latency_seconds",
                "chimney_hop_latency_seconds_count",
                layer=layer,
            )
            assert count > 0
        sent = value(fams, "chimney_bytes_sent", "chimney_bytes_sent_total", layer="nic0")
        assert sent >= 5000
        calls = value(
            fams,
            "chimney_calls",
            "chimney_calls_total",
            layer="nic0",
            call="NdisTcpOffloadSendComplete",
            status="NDIS_STATUS_SUCCESS",
        )
        assert calls >= 5
        assert (
            value(fams, "chimney_call_failures", "chimney_call_failures_total", layer="nic0") == 0
        )
        sends = value(
            fams, "chimney_send_completion_seconds", "chimney_send_completion_seconds_count"
        )
        assert sends == 5
        inf = value(
            fams,
            "chimney_send_completion_seconds",
            "chimney_send_completion_seconds_bucket",
            le="+Inf",
        )
        assert inf == sends
        assert fams["chimney_rpc_request_seconds"].type == "histogram"  # fed by the RPC server
        for method in ("tcp.send", "tcp.connect"):
            assert (
                value(
                    fams,
                    "chimney_rpc_request_seconds",
                    "chimney_rpc_request_seconds_count",
                    method=method,
                )
                >= 1
            ), method
        assert value(fams, "process_resident_memory_bytes", "process_resident_memory_bytes") > 0
        assert value(fams, "process_open_fds", "process_open_fds") > 0
        assert value(fams, "process_cpu_seconds", "process_cpu_seconds_total") > 0
        # the web port serves the same registry; the stack.metrics RPC too
        status, _, body = fetch(w.url + "/metrics")
        assert status == 200
        assert "chimney_send_completion_seconds" in families(body.decode())
        rpc_text = c.call("stack.metrics")
        assert (
            value(
                families(rpc_text),
                "chimney_send_completion_seconds",
                "chimney_send_completion_seconds_count",
            )
            == sends
        )
        c.tcp_close(conn)


def check_config(
    *args: str, config: str | None = None, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "chimneyd", "--check-config", *args]
    if config is not None:
        path = tmp_path / "c.toml"
        path.write_text(config)
        cmd += ["--config", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=60)


def test_off_loopback_needs_a_token(tmp_path: Path) -> None:
    for flag, key in (("--web", "web.listen"), ("--metrics", "metrics.listen")):
        run = check_config(flag, "0.0.0.0:0", tmp_path=tmp_path)
        assert run.returncode == 2
        assert f'{key}: "0.0.0.0:0" is not loopback: set rpc.token' in run.stderr
        run = check_config(flag, "0.0.0.0:0", config='[rpc]\ntoken = "t"\n', tmp_path=tmp_path)
        assert run.returncode == 0, run.stderr
    run = check_config("--web", "unix:/tmp/x", tmp_path=tmp_path)
    assert run.returncode == 2 and "web.listen" in run.stderr
    run = check_config(
        config='[web]\nlisten = "127.0.0.1:8080"\npage_size = 0\n', tmp_path=tmp_path
    )
    assert run.returncode == 2 and "web.page_size" in run.stderr
    run = check_config(tmp_path=tmp_path)
    assert '"web"' in run.stdout and '"metrics"' in run.stdout  # with their defaults


def test_with_a_token_every_page_asks_for_it(tmp_path: Path) -> None:
    config = '[rpc]\ntoken = "s3cret"\n'
    with web_daemon(tmp_path, config, token="s3cret") as w:
        assert fetch(w.url + "/")[0] == 401
        assert fetch(w.url + "/api/info")[0] == 401
        assert fetch(w.url + "/?token=wrong")[0] == 401
        assert fetch(w.metrics_url)[0] == 401
        assert fetch(w.metrics_url, {"Authorization": "Bearer s3cret"})[0] == 200
        status, headers, _ = fetch(w.url + "/connections?page=2&token=s3cret")
        assert status == 303
        assert headers["Location"] == "/connections?page=2"  # the token leaves the address
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "s3cret" not in cookie
        assert "HttpOnly" in headers["Set-Cookie"]
        status, headers, body = fetch(w.url + "/connections", {"Cookie": cookie})
        assert status == 200 and b"<title>chimneyd" in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_with_an_admin_token_the_401_says_which_token(tmp_path: Path) -> None:
    """The view shows every connection, so it takes the admin token when there is one; a
    client sending the plain token is told that, not that it needs the token it sent."""
    config = '[rpc]\ntoken = "tok"\nadmin_token = "adm"\n'
    with web_daemon(tmp_path, config, token="adm") as w:
        status, _, body = fetch(w.metrics_url, {"Authorization": "Bearer tok"})
        assert status == 401
        assert b"admin token" in body
        assert fetch(w.metrics_url, {"Authorization": "Bearer adm"})[0] == 200


def test_a_connection_page_is_at_a_number_only(tmp_path: Path) -> None:
    with web_daemon(tmp_path) as w:
        assert fetch(w.url + "/conn/abc")[0] == 404
        assert fetch(w.url + "/conn/1x")[0] == 404
        assert fetch(w.url + "/conn/7")[0] == 200  # a page that says so when there is none


def test_loopback_pages_check_host_and_origin(tmp_path: Path) -> None:
    with web_daemon(tmp_path) as w:
        port = w.url.rsplit(":", 1)[1]
        assert fetch(w.url + "/")[0] == 200
        assert fetch(w.url + "/", {"Host": f"localhost:{port}"})[0] == 200
        # a name rebound onto 127.0.0.1 by a page elsewhere is refused
        assert fetch(w.url + "/api/info", {"Host": f"attacker.example:{port}"})[0] == 421
        assert upgrade(w.url, "http://attacker.example") == 403  # another site's page
        assert upgrade(w.url, w.url) == 101  # the view's own page
        assert fetch(w.url + "/static/../server.py")[0] == 404
        assert fetch(w.url + "/static/live.js")[0] == 200
