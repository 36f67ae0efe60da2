"""The web view's and `/metrics`' 401 tells a newcomer how to give the token: where the daemon
reads its admin token from (`rpc.admin_token` or the CHIMNEYD_ADMIN_TOKEN variable the README
starts it with) and how a browser gives it (`?token=`, then a cookie)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from chimneyd.daemon import ADMIN_TOKEN_ENV
from tests.web.support import web_daemon


def _refused(url: str) -> str:
    try:
        urllib.request.urlopen(url, timeout=10)
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code
        return e.read().decode()
    raise AssertionError(f"{url} answered without the token")


def test_the_401_names_the_variable_and_the_query(tmp_path: Path) -> None:
    config = '[rpc]\ntoken = "tok"\nadmin_token = "adm"\n'
    with web_daemon(tmp_path, config, token="adm") as w:
        for url in (w.url + "/", w.metrics_url):
            body = _refused(url)
            assert ADMIN_TOKEN_ENV in body, f"{url}: no {ADMIN_TOKEN_ENV} in {body!r}"
            assert "rpc.admin_token" in body and "?token=" in body, body
            assert "Authorization: Bearer" in body, body
