"""Serve the job console: its static files plus a `config.js` built from the environment.

Standard library only, so it runs from any Python 3.11+ (dev only; not deployed):

    python services/console/serve.py --port 8002

Environment (each optional):
  CONSOLE_API_URL       the API's origin, e.g. http://127.0.0.1:8000
  CONSOLE_REALTIME_URL  the realtime WebSocket URL, e.g. ws://127.0.0.1:8001/ws
Unset, the page uses its own host name with ports 8000 and 8001.

Every answer carries a strict Content-Security-Policy: scripts and styles only
from this origin, and network access only to the API and realtime origins.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

STATIC_DIR = Path(__file__).resolve().parent / "static"


def _origin(url: str) -> str:
    """`scheme://host[:port]` of `url`, for the CSP's connect-src."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def build_config(api_url: str | None, realtime_url: str | None) -> tuple[str, str]:
    """The `config.js` body and the Content-Security-Policy that admits its URLs."""
    config = {"apiUrl": (api_url or "").rstrip("/"), "realtimeUrl": realtime_url or ""}
    script = f"window.CONSOLE_CONFIG = Object.freeze({json.dumps(config)});\n"
    # Unconfigured, the page derives the URLs from its own host name: allow any
    # port on that host (CSP has no "same host" keyword), else exactly the two.
    connect = [_origin(url) for url in (api_url, realtime_url) if url]
    if len(connect) < 2:
        connect += ["http://localhost:*", "ws://localhost:*", "http://127.0.0.1:*"]
        connect += ["ws://127.0.0.1:*"]
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {' '.join(dict.fromkeys(connect))}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return script, policy


class ConsoleHandler(SimpleHTTPRequestHandler):
    """Static files from `static/`, `/config.js` from the environment, security headers."""

    config_script = ""
    content_security_policy = "default-src 'none'"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/config.js":
            body = self.config_script.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", self.content_security_policy)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"console: {self.address_string()} {format % args}\n")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("CONSOLE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8002")))
    args = parser.parse_args(argv)
    script, policy = build_config(
        os.environ.get("CONSOLE_API_URL"), os.environ.get("CONSOLE_REALTIME_URL")
    )
    handler = type(
        "Handler", (ConsoleHandler,), {"config_script": script, "content_security_policy": policy}
    )
    server = ThreadingHTTPServer((args.host, args.port), partial(handler, directory=STATIC_DIR))
    print(f"console: serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    # SIGTERM (`docker stop`) stops it as Ctrl-C does; as a container's PID 1 it
    # would otherwise be ignored until the SIGKILL ten seconds later.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
