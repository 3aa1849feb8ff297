"""mkdocs hook: the benchmark plots in `bench/results/` published with the site.

`make bench` writes them there and the performance page shows them; adding
them to the build at `assets/bench/` (rather than copying them into `docs/`)
keeps one file per plot, so a new run updates the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
DEST = "assets/bench"


def on_files(files: Files, *, config: Any) -> Files:
    """Add every PNG of `bench/results/` as `assets/bench/<name>.png`."""
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"{DEST}/{plot.name}", abs_src_path=str(plot)))
    return files
