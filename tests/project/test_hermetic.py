"""`make test` is hermetic: a broker exported in the shell (as on any Celery host) is not used."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_an_exported_broker_url_does_not_take_the_tests_jobs_away():
    nothing_listens = "redis://127.0.0.1:9/0"  # the discard port: had the suite used it, no job would end
    env = {**os.environ, "CELERY_BROKER_URL": nothing_listens, "REDIS_URL": nothing_listens,
           "CELERY_RESULT_BACKEND": nothing_listens}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/integration/test_job_flow.py::test_a_prompt_job_from_the_form_succeeds_with_its_output_stored"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
