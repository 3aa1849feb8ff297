#!/bin/sh
# Print the Compose command that works here: `docker compose` (the v2 plugin),
# else `docker-compose` (v1, or v2's standalone binary). With neither, say on
# stderr what is missing and how to get it, print nothing and exit 1.
# The Makefile's compose targets use it unless COMPOSE is set.
if docker compose version >/dev/null 2>&1; then
  echo "docker compose"
  exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
  echo docker-compose
  exit 0
fi
say() { printf '%s\n' "$@" >&2; }  # builtins only: PATH may hold little
if ! command -v docker >/dev/null 2>&1; then
  say "Docker is not installed: there is no \`docker\` command on PATH." \
    "\`make up\`, \`down\`, \`logs\` and \`ps\` run the stack in containers, with Docker and Compose." \
    "Install either of:" \
    "  - Docker Engine and its Compose plugin (Linux): https://docs.docker.com/engine/install/" \
    "  - Docker Desktop, which has both (macOS, Windows, Linux): https://docs.docker.com/desktop/"
else
  say "Docker Compose is missing: neither \`docker compose\` (v2) nor \`docker-compose\` (v1) works." \
    "Install the Compose plugin: https://docs.docker.com/compose/install/linux/" \
    "(from Docker's own apt or rpm repository: docker-compose-plugin; Ubuntu's archive:" \
    "apt-get install docker-compose-v2; Debian 12's has v1 only: apt-get install docker-compose)." \
    "Or name another command: make up COMPOSE=podman-compose."
fi
say "Without Docker, \`make dev\` runs the same services from .venv (embedded Postgres and Redis)."
exit 1
