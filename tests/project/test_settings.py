"""project/settings.py and project/env.py: a yes/no setting reads every spelling (a typo stops
the start: tests/deploy/test_deploy.py runs it), and every setting read from the environment is
in the README's Configuration table."""
import re

import pytest

from project.env import env_bool
from tests.conftest import ROOT


@pytest.mark.parametrize("value, expected", [("true", True), ("Yes", True), ("1", True), ("on", True),
                                             ("false", False), ("NO", False), ("0", False), ("off", False),
                                             ("", None), ("  ", None)])
def test_a_yes_no_setting_reads_every_spelling(monkeypatch, value, expected):
    monkeypatch.setenv("SOME_FLAG", value)
    assert env_bool("SOME_FLAG", default=None) is expected


def test_every_setting_read_from_the_environment_is_in_the_readme():
    read = set(re.findall(r'env_(?:str|bool|int|float|decimal|list)\(\s*"([A-Z0-9_]+)"',
                          (ROOT / "project" / "settings.py").read_text()))
    # In the Configuration table's first column, which claims to list them all; a mention in
    # prose elsewhere is not enough.
    table = [line.split("|")[1] for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", "".join(table)))
    assert read and sorted(read - documented) == []
