"""Model cards: what each shipped toybox model is, how it was made, and how good it is (measured)."""

from __future__ import annotations

import json
from pathlib import Path


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def write_card(folder: Path, title: str, role: str, facts: dict, metrics: dict, regenerate: str) -> Path:
    """README.md (human) + card.json (the same numbers, machine-readable) inside the model folder."""
    folder = Path(folder)
    facts = {**facts, "size on disk (MB)": round(_size_mb(folder), 2)}
    lines = [f"# {title}", "", role, "", "## Facts", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", "## Quality gates (measured)", "", "| gate | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "## Regenerate", "", regenerate, ""]
    (folder / "README.md").write_text("\n".join(lines))
    (folder / "card.json").write_text(json.dumps({"facts": facts, "metrics": metrics}, indent=2, sort_keys=True) + "\n")
    return folder / "README.md"
