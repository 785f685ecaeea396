"""Benchmarks that prove speed and savings (issue 10). `make bench` runs them all;
`python -m bench NAME --quick` runs one quickly; `python -m bench --list` names them.

Each benchmark measures the project and a baseline in the same run on the same machine
(absolute times drift on a shared machine; ratios hold), prints both with their ratio and the
target, and writes everything to `bench/results/<name>.json`.

Modules: harness (scratch database, private Redis, real workers, figures), celery_app + tasks
(the raw Celery baseline), one module per benchmark (throughput, dispatch, completion,
routing_time, cost, installer), and for the cost benchmark costsim (the pure discrete-event
simulator), costtrace (the seeded traces) and costbound (the offline references).
"""
