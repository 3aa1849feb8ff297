# The job console: its static files and serve.py (standard library only). No
# venv and no dependencies, so it has an image of its own rather than a target
# of deploy/Dockerfile (whose stages all build a service's venv):
#
#   docker build -f deploy/console.Dockerfile -t fastapi-microservices/console .
#
# The page calls the API and the realtime service from the browser, at
# CONSOLE_API_URL and CONSOLE_REALTIME_URL (their published addresses); both
# must allow the console's origin (CORS_ORIGINS). PYTHON_IMAGE as in
# deploy/Dockerfile (the same Python as the services).

ARG PYTHON_IMAGE=python:3.14-slim

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONSOLE_HOST=0.0.0.0 \
    PORT=8002 \
    HEALTH_PATH=/
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY services/console services/console
COPY deploy/healthcheck.py deploy/healthcheck.py
USER 10001:10001
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
CMD ["python", "services/console/serve.py"]
