"""The front-end files tickhub ships but does not write: the dashboard's chart library and
Swagger UI for `/docs`, pinned in package-lock.json, copied out of node_modules/ into vendor/
(git-ignored, shipped in the wheel) with their licences.

One rule for every way they get built: `make ui` runs this module, and the wheel's build hook
(hatch_build.py, run by `pip install .`, `pip install -e .`, `pip wheel` and `python -m build`)
calls `build_vendor()`, so an install from a git checkout or an sdist carries them too. The
running server only asks `missing()` (its start-up log line and readiness `checks.dashboard`).

Standard library only: the build hook loads this file before tickhub's dependencies exist.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

UI_DIR = Path(__file__).resolve().parent

# Each vendored file (relative to UI_DIR) and the file under node_modules/ it is copied from.
DASHBOARD = {
    "vendor/lightweight-charts.standalone.production.mjs": (
        "lightweight-charts/dist/lightweight-charts.standalone.production.mjs"
    ),
    "vendor/lightweight-charts.LICENSE": "lightweight-charts/LICENSE",
}
DOCS = {
    "vendor/swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "vendor/swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
    "vendor/swagger-ui.LICENSE": "swagger-ui-dist/LICENSE",
    "vendor/swagger-ui.NOTICE": "swagger-ui-dist/NOTICE",
}
VENDORED = {**DASHBOARD, **DOCS}
# Holds the digest of the package-lock.json the vendored files were copied for.
STAMP = "vendor/.installed"
# No install scripts: neither package needs one, and swagger-ui-dist's dependency
# (@scarf/scarf) would report the install to a third party from its postinstall.
NPM_CI = ("ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error")


class AssetsError(Exception):
    """The front-end files cannot be built; the message says what to do."""


def missing(ui_dir: Path = UI_DIR, files: dict[str, str] = VENDORED) -> list[str]:
    """The vendored files (of `files`) that are not there."""
    return [name for name in files if not (ui_dir / name).is_file()]


def _lock_digest(ui_dir: Path) -> str:
    return hashlib.sha256((ui_dir / "package-lock.json").read_bytes()).hexdigest()


def up_to_date(ui_dir: Path = UI_DIR) -> bool:
    """Every vendored file is there, copied for the current package-lock.json."""
    stamp = ui_dir / STAMP
    return (
        not missing(ui_dir)
        and stamp.is_file()
        and stamp.read_text().strip() == _lock_digest(ui_dir)
    )


def build_vendor(ui_dir: Path = UI_DIR) -> bool:
    """Install the pinned packages (`npm ci`) and copy the vendored files, unless they are up
    to date; returns whether it built them."""
    stamp = ui_dir / STAMP
    if up_to_date(ui_dir):
        stamp.touch()  # make compares times: up to date by content is up to date
        return False
    npm = shutil.which("npm")
    if npm is None:
        raise AssetsError(
            "npm was not found: building tickhub needs Node.js 18 or newer with npm, to "
            "install the dashboard's chart library and Swagger UI pinned in "
            f"{ui_dir / 'package-lock.json'} (Debian/Ubuntu: apt-get install nodejs npm)"
        )
    done = subprocess.run([npm, *NPM_CI], cwd=ui_dir, check=False)
    if done.returncode != 0:
        raise AssetsError(
            f"`npm ci` in {ui_dir} failed (exit {done.returncode}; its output is above): it "
            "installs the packages pinned in package-lock.json from the npm registry"
        )
    shutil.rmtree(ui_dir / "vendor", ignore_errors=True)  # no file of an older list lingers
    for target, source in VENDORED.items():
        path = ui_dir / target
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ui_dir / "node_modules" / source, path)
    stamp.write_text(_lock_digest(ui_dir) + "\n")
    return True


if __name__ == "__main__":  # `make ui`
    try:
        build_vendor()
    except AssetsError as exc:
        raise SystemExit(f"make ui: {exc}") from None
