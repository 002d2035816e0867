"""Screenshots of the Prefect UI pages slmops writes to, taken with headless Chromium, to look
at what a person sees: the automation, the refine-tune and promote run forms, the latest
training, gate, promotion and ingest reports.

Run it with the local stack up and the demo run (`make demo`):
    python -m infra.ui_screenshots .slmops/ui        # then open the PNGs
Needs a `chromium` (or `chromium-browser`, `google-chrome`) on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from infra.prefect_runs import prefect_api

API = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api").rstrip("/")
UI = API.removesuffix("/api")


def _api(path: str, body: dict[str, object] | None = None) -> object:
    return prefect_api(API, path, body)


def _artifact_id(key: str) -> str | None:
    found = _api(
        "artifacts/filter",
        {"artifacts": {"key": {"any_": [key]}}, "limit": 1, "sort": "CREATED_DESC"},
    )
    return str(found[0]["id"]) if isinstance(found, list) and found else None


def pages() -> dict[str, str]:
    """Page name -> URL, for what exists on the server now."""
    urls = {"automations": f"{UI}/automations"}
    for name, deployment in (
        ("refine-tune-run-form", "refine-tune/weekly"),
        ("promote-run-form", "promote-adapter/manual"),
        ("assess-run-form", "assess/manual"),
    ):
        found = _api(f"deployments/name/{deployment}")
        if isinstance(found, dict):
            urls[name] = f"{UI}/deployments/deployment/{found['id']}/run"
    for name, deployment in (  # what the schedules and the release trigger run with
        ("release-deployment", "refine-tune/on-base-model-release"),
        ("ingest-deployment", "ingest-docs/hourly"),
    ):
        found = _api(f"deployments/name/{deployment}")
        if isinstance(found, dict):
            urls[name] = f"{UI}/deployments/deployment/{found['id']}?tab=Parameters"
    for name, key in (
        ("training-report", "training-report-support-bot"),
        ("promotion-report", "promotion-support-bot"),
        ("gate-report", "gate-support-bot"),
        ("ingest-report", "ingest-support-docs"),
        ("assess-report", "assess-support-bot"),
    ):
        artifact = _artifact_id(key)
        if artifact:
            urls[name] = f"{UI}/artifacts/artifact/{artifact}"
    return urls


def main(out: Path) -> None:
    browser = next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        sys.exit("no chromium on PATH: install it (apt-get install chromium) and run again")
    out.mkdir(parents=True, exist_ok=True)
    for name, url in pages().items():
        png = out / f"{name}.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1400,2200",
                "--virtual-time-budget=20000",  # let the single-page app load its data
                f"--screenshot={png}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(f"{png}  <- {url}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".slmops/ui"))
