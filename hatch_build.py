"""The wheel's build hook: the front-end files pinned in tickhub/ui/package-lock.json (the
dashboard's chart library, Swagger UI) are installed with npm and copied into
tickhub/ui/vendor/ before hatchling collects the wheel's files, so every wheel — and every
`pip install` of a checkout or an sdist, editable ones included — has a dashboard that draws
and a `/docs` that renders offline. The rule itself is `tickhub/ui/assets.py`, which
`make ui` runs too; without npm the build stops with a message saying what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _assets(root: str) -> Any:
    # Loaded by path: the package (and its dependencies) are not importable while it builds.
    path = Path(root, "tickhub", "ui", "assets.py")
    spec = importlib.util.spec_from_file_location("tickhub_build_assets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class VendorHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        assets = _assets(self.root)
        built = assets.build_vendor(Path(self.root, "tickhub", "ui"))
        self.app.display_info(
            "tickhub: front-end files "
            + ("installed from package-lock.json" if built else "up to date")
        )
