"""The dashboard as a Host started from the command line serves it: behind the
connection limiter (`run_service`), which the in-process harness leaves out."""

from __future__ import annotations

import urllib.error
import urllib.request

from tests.harness.hostproc import running_host


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_pages_load_without_a_credential_from_a_cli_host(tmp_path) -> None:
    with running_host(tmp_path) as host:
        status, page = fetch(host.url + "/dashboard/")
        assert status == 200 and "<html" in page.lower(), (status, page[:300])
        assert fetch(host.url + "/dashboard/static/app.js")[0] == 200
        # The API behind it still wants a credential.
        status, body = fetch(host.url + "/api/tasks")
        assert status == 401 and '"error"' in body, (status, body)
