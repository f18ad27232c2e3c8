"""Reading a kustomize directory of plain manifests, for the deployment tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class Manifests:
    """Every document of the resources a ``kustomization.yaml`` lists, in order."""

    def __init__(self, directory: Path) -> None:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        self.docs: list[dict[str, Any]] = []
        for name in kustomization["resources"]:
            self.docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d is not None]

    def find(self, kind: str, name: str) -> dict[str, Any]:
        """The one document of ``kind`` named ``name``."""
        (doc,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return doc
