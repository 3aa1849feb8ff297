"""Container HEALTHCHECK of the web images: GET 127.0.0.1:$PORT$HEALTH_PATH, 200 or fail.

Standard library only (the slim images have no curl). Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    """Probe the server in this container once."""
    port = os.environ.get("PORT", "8000")
    path = os.environ.get("HEALTH_PATH", "/health/ready")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
