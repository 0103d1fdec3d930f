"""The dashboard's files: the vendored libraries are exactly what MANIFEST.json
records, the wheel ships every file, and nothing is fetched from elsewhere.
(No browser needed.)"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import tomllib
from pathlib import Path

from hakuriver.host.dashboard import load_assets

WEB = Path(__file__).resolve().parents[2] / "hakuriver" / "web"
VENDOR = WEB / "vendor"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_vendored_files_match_their_manifest() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text(encoding="utf-8"))["files"]
    on_disk = {p.name for p in VENDOR.iterdir()} - {"MANIFEST.json"}
    assert on_disk == set(manifest), "every vendored file, and only those, is in MANIFEST.json"
    for name, entry in manifest.items():
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"vendor/{name} differs from {entry['package']}@{entry['version']}"
        assert re.fullmatch(r"\d+\.\d+\.\d+", entry["version"]) and entry["license"]


def test_the_wheel_ships_every_web_file() -> None:
    patterns = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["hakuriver"]
    for path in WEB.rglob("*"):
        if path.is_file():
            name = path.relative_to(WEB.parent).as_posix()
            assert any(fnmatch.fnmatch(name, p) and name.count("/") == p.count("/") for p in patterns), name
    assert set(load_assets()) == {p.relative_to(WEB).as_posix() for p in WEB.rglob("*") if p.is_file()}


def test_the_pages_load_nothing_from_elsewhere() -> None:
    for path in [*WEB.glob("*.js"), *WEB.glob("*.html"), *WEB.glob("*.css")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://|//cdn|@import", text), f"{path.name} refers to another site"
        for spec in re.findall(r"""(?:from|import)\s*["']([^"']+)["']""", text):
            assert spec.startswith("./"), f"{path.name} imports {spec!r}: only the dashboard's own files"
    html = (WEB / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in html and "style=" not in html  # the CSP allows no inline script
