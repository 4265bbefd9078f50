"""Export the contract: build it from the project as it is, compare it with the
committed files, write them.

May import: the other modules of this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loaders.config import PROJECT_ROOT
from loaders.contract.build import build
from loaders.contract.compile import compiled_manifest
from loaders.contract.document import CONTRACT_DOCS, CONTRACT_JSON, CONTRACT_YAML
from loaders.contract.render import render_docs, render_json, render_yaml


@dataclass(frozen=True)
class Exported:
    document: dict[str, Any]
    json: str
    yaml: str
    docs: str

    def files(self) -> dict[Path, str]:
        return {CONTRACT_JSON: self.json, CONTRACT_YAML: self.yaml, CONTRACT_DOCS: self.docs}


def export(project_root: Path = PROJECT_ROOT, work_dir: Path | None = None) -> Exported:
    """Build the contract from the project as it is now (nothing written)."""
    doc = build(compiled_manifest(project_root, work_dir), project_root)
    return Exported(doc, render_json(doc), render_yaml(doc), render_docs(doc))


def write(exported: Exported, project_root: Path = PROJECT_ROOT) -> list[Path]:
    """Write the committed files; returns those whose content changed."""
    changed = []
    for rel, text in exported.files().items():
        path = project_root / rel
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(rel)
    return changed


def stale(exported: Exported, project_root: Path = PROJECT_ROOT) -> list[Path]:
    """The committed files that differ from ``exported``."""
    return [
        rel for rel, text in exported.files().items()
        if not (project_root / rel).exists() or (project_root / rel).read_text() != text
    ]
