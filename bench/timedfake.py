"""The fake ComfyUI in its fastest mode, except for the overhead benchmark's 0.25 s workflow.

`python -m bench.timedfake [--port N]`: a FakeComfyUI (steps=0, step_delay=0) in its own
process, like a real ComfyUI next to the workers, whose node_delay is 0 for every workflow but
the ones that start with an EmptyImage of SLOW_SIDE or more: their nodes take
RUN_SECONDS / their node count, so that workflow runs for RUN_SECONDS. One server serves both
workflows, so nothing has to be re-pointed between them (a backend row cached in a worker
could miss that), and ComfyUI runs one prompt at a time, so a per-run knob is safe.
"""
import argparse

from tests.fakes.comfyui import FakeComfyUI
from tests.fakes.loopback import serve_until_terminated

RUN_SECONDS = 0.25
SLOW_SIDE = 1024


class TimedFake(FakeComfyUI):
    async def _run_node(self, run, nid, values, sig):
        sides = [node["inputs"].get("width", 0) for node in run.prompt.values() if node["class_type"] == "EmptyImage"]
        slow = sides and max(sides) >= SLOW_SIDE
        self.node_delay = RUN_SECONDS / len(run.prompt) if slow else 0.0
        return await super()._run_node(run, nid, values, sig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve_until_terminated(TimedFake(port=args.port, steps=0, step_delay=0).start())


if __name__ == "__main__":
    main()
