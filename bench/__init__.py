"""The benchmark suite: `python -m bench --profile quick|full` (`make bench`).

It starts the real processes itself, drives them with wrk (and an asyncio
generator where wrk cannot go), compares each against a baseline started in
the same run, and writes results.md, results.json and PNG plots into
bench/results/.
"""
