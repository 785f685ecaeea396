"""The curl examples in README.md work against a running server, as written."""
import json
import re
import shutil
import subprocess

import pytest

from routing import tokens
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## JSON API", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("curl ")]


@pytest.mark.django_db(transaction=True)
def test_every_curl_example_in_the_readme_works(live_server, alice, local_backend, redis_server):
    _, key = tokens.token_create(user=alice, name="readme")
    env = {"BASE": live_server.url, "TOKEN": key, "PATH": "/usr/bin:/bin"}
    commands = _readme_commands()
    assert len(commands) == 7
    results = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], env=env, capture_output=True,
                              text=True, timeout=30, cwd=ROOT)
        body, _, status = done.stdout.rpartition("\n")
        results.append((status, body))
        if command.startswith("curl -s -X POST \"$BASE/api/jobs\""):
            env["JOB_ID"] = json.loads(body)["id"]
    statuses = [status for status, _ in results]
    assert statuses == ["201", "200", "200", "200", "200", "200", "200"], results
    assert json.loads(results[3][1])["status"] == "cancelled"
    assert re.search(r'"ok": ?(true|false)', results[6][1])
