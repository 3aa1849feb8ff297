"""Development only: the process and service helpers the tests, bench/ and scripts/ share.

Starting a process in its own group and stopping it (`processes`), Postgres
and Redis from the environment or embedded (`services`), a migrated scratch
database (`database`), the generous rate limits of runs that are not about
rate limits (`ratelimits`), a memory cgroup (`cgroups`), idle WebSocket
clients (`realtime`) and keep-alive limits for HTTP clients (`http`). Never
installed in an image.
"""
