"""Keep requirements/*.txt in step with the pyproject files.

`make lock` resolves with uv and exports one hash-pinned requirements file per
service (plus dev), then records a digest of every dependency declaration it
was made from. `make lint` recomputes that digest: a pyproject change that was
not followed by `make lock` fails the lint. Only dependency declarations count,
so editing a description or a tool setting does not invalidate the lock.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGEST_FILE = ROOT / "requirements" / "inputs.sha256"


def _declarations() -> dict[str, object]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    found: dict[str, object] = {"root": [root["project"], root.get("dependency-groups", {})]}
    for member in sorted(members):
        data = tomllib.loads((ROOT / member / "pyproject.toml").read_text())
        found[member] = {
            "dependencies": sorted(data["project"].get("dependencies", [])),
            "optional": data["project"].get("optional-dependencies", {}),
            "groups": data.get("dependency-groups", {}),
            "sources": data.get("tool", {}).get("uv", {}).get("sources", {}),
        }
    project = found["root"]
    assert isinstance(project, list)
    project[0] = {
        "dependencies": project[0].get("dependencies", []),
        "requires-python": project[0].get("requires-python"),
    }
    found["workspace"] = [members, root["tool"]["uv"].get("sources", {})]
    return found


def digest() -> str:
    blob = json.dumps(_declarations(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def main(argv: list[str]) -> int:
    if argv[1:] == ["write"]:
        DIGEST_FILE.write_text(digest() + "\n")
        return 0
    if argv[1:] == ["check"]:
        recorded = DIGEST_FILE.read_text().strip() if DIGEST_FILE.exists() else ""
        if recorded != digest():
            print(
                "requirements/*.txt are out of date with the pyproject files: run `make lock`",
                file=sys.stderr,
            )
            return 1
        for path in sorted((ROOT / "requirements").glob("*.txt")):
            if "://" in path.read_text():
                print(f"{path.name} records a URL; lock files must not", file=sys.stderr)
                return 1
        return 0
    print("usage: lockfiles.py write|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
