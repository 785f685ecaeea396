"""Where PyTorch is installed from (torchbuild.torch_source), one test per rule of its docstring."""
import pytest

from workers.installer.errors import Failure
from workers.installer.torchbuild import build_for, torch_source

CU128 = build_for("cu128", "test")


def never_asked() -> str:
    raise AssertionError("pip config list was run although something before it decided")


def test_by_default_the_build_comes_from_its_own_index():
    source = torch_source(CU128, {}, lambda: "")
    assert (source.index_url, source.kind) == ("https://download.pytorch.org/whl/cu128", "pytorch")


def test_builds_whose_wheels_are_on_pypi_take_no_index_url():
    source = torch_source(build_for("mps", "test", "darwin"), {"COMFY_TORCH_INDEX_URL": "https://m/whl/"}, never_asked)
    assert (source.index_url, source.kind) == ("", "pypi")


@pytest.mark.parametrize("setting, expected", [
    ("https://mirror.example/whl/", "https://mirror.example/whl/cu128"),
    ("https://mirror.example/whl", "https://mirror.example/whl/cu128"),
    ("https://mirror.example/pytorch/{build}/simple", "https://mirror.example/pytorch/cu128/simple"),
])
def test_comfy_torch_index_url_names_a_mirror_the_build_key_goes_into(setting, expected):
    source = torch_source(CU128, {"COMFY_TORCH_INDEX_URL": setting, "PIP_INDEX_URL": "https://other/"}, never_asked)
    assert (source.index_url, source.kind) == (expected, "mirror")


def test_a_mirror_with_a_password_is_masked_where_it_is_shown():
    source = torch_source(CU128, {"COMFY_TORCH_INDEX_URL": "https://me:pw@mirror.example/whl/"}, never_asked)
    assert source.index_url == "https://me:pw@mirror.example/whl/cu128" and "pw" not in source.origin


def test_a_mirror_setting_that_is_not_a_url_fails_with_an_example():
    with pytest.raises(Failure) as failure:
        torch_source(CU128, {"COMFY_TORCH_INDEX_URL": "mirror.example/whl"}, never_asked)
    assert "not a URL" in failure.value.cause and "https://mirror.example/whl/" in failure.value.fix


@pytest.mark.parametrize("variable, value", [("PIP_INDEX_URL", "https://mirror.example/simple"),
                                             ("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", "/opt/wheels")])
def test_a_pip_environment_variable_that_chooses_an_index_is_honoured(variable, value):
    source = torch_source(CU128, {variable: value}, never_asked)
    assert (source.index_url, source.kind) == ("", "pip") and variable in source.origin


@pytest.mark.parametrize("line, setting", [("global.index-url='https://mirror.example/simple'", "global.index-url"),
                                           ("install.find-links='/srv/wheels'", "install.find-links"),
                                           ("global.no-index='true'", "global.no-index")])
def test_a_pip_config_file_that_chooses_an_index_is_honoured(line, setting):
    source = torch_source(CU128, {}, lambda: f"global.timeout='60'\n{line}\n")
    assert (source.index_url, source.kind) == ("", "pip") and setting in source.origin


def test_no_index_set_to_false_and_other_settings_choose_nothing():
    config = "global.no-index='false'\nglobal.extra-index-url='https://extra.example/simple'\nglobal.timeout='60'\n"
    assert torch_source(CU128, {"PIP_NO_INDEX": "off"}, lambda: config).kind == "pytorch"
