"""`python -m bench [NAME ...] [--quick | --tiny] [--postgres] [--out DIR]`

Runs every benchmark (or the named ones) in one session: one scratch database, one private
Redis, one worker process shared by the benchmarks that need workers (they run first; the
workers are stopped before the in-process ones). Prints each benchmark's figures with the
ratio to its baseline and writes them to DIR/<name>.json (default bench/results/).
"""
import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

# Order matters: the benchmarks with workers first, then the workers stop.
BENCHMARKS = {
    "throughput": "bench.throughput",
    "dispatch": "bench.dispatch",
    "completion": "bench.completion",
    "overhead": "bench.overhead",
    "fleet": "bench.fleet",
    "routing": "bench.routing_time",
    "cost": "bench.cost",
    "installer": "bench.installer",
}
NEEDS_WORKERS = {"throughput", "dispatch", "completion", "overhead", "fleet"}
NEEDS_DJANGO = NEEDS_WORKERS | {"routing"}


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(BENCHMARKS)} (default: all)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_const", dest="size", const="quick", help="fewer samples")
    sizes.add_argument("--tiny", action="store_const", dest="size", const="tiny",
                       help="a handful of samples: proves the code works (tests/bench/test_smoke.py)")
    parser.add_argument("--postgres", action="store_true",
                        help="a scratch PostgreSQL database on 127.0.0.1:5432 instead of SQLite")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes (default bench/results)")
    parser.add_argument("--list", action="store_true", help="name the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.size = args.size or "full"
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    from . import harness

    names = [name for name in BENCHMARKS if name in (args.names or BENCHMARKS)]
    ctx = harness.Context(size=args.size, postgres=args.postgres, out_dir=args.out or harness.RESULTS)
    failed = []
    started = time.perf_counter()
    try:
        if any(name in NEEDS_DJANGO for name in names):
            ctx.start()
        for name in names:
            if name not in NEEDS_WORKERS:
                ctx.stop_workers()
            if not _run_one(ctx, name):
                failed.append(name)
    finally:
        ctx.close()
    print(f"\n{len(names) - len(failed)} of {len(names)} benchmarks ran in {time.perf_counter() - started:.0f} s; "
          f"results in {ctx.out_dir}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _run_one(ctx, name: str) -> bool:
    from . import harness

    module = importlib.import_module(BENCHMARKS[name])
    started_at, started = harness.now_iso(), time.perf_counter()
    try:
        result = module.run(ctx)
    except Exception:
        print(f"== {name}: FAILED\n{traceback.format_exc()}", flush=True)
        return False
    result = {"name": name, "title": module.TITLE, "mode": ctx.size,
              "database": ctx.database if name in NEEDS_DJANGO else None,
              "started_at": started_at, "elapsed_seconds": round(time.perf_counter() - started, 2),
              "machine": harness.machine(), **result}
    harness.write_result(result, ctx.out_dir)
    print(harness.show(result), flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
