"""Shared library of the services: settings, auth, database and Redis plumbing,
health checks, logging, middleware, errors, and the contracts between services."""
