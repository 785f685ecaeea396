"""ComfyUI's venv: readiness checked for real each run, a broken venv repaired in place, the
user's pip configuration honoured, torchaudio left out, and failures a person can act on.
The installer runs its steps for real; FakeRunner stands in for venv, pip and envcheck.py."""
import json
import sys

import pytest

from tests.workers.installer.support import (
    ArtifactServer,
    FakeRunner,
    hooks_for,
    make_site,
    nvidia_machine,
    options_for,
    without_pip_configuration,
)
from workers.installer.environment import CHECK_SCRIPT, Environment
from workers.installer.errors import InstallError
from workers.installer.layout import Layout
from workers.installer.pipeline import Installer
from workers.installer.runner import Completed
from workers.installer.torchbuild import build_for

# ComfyUI v0.8.0's requirements.txt (commit fc0cb10b), as shipped.
COMFYUI_080_REQUIREMENTS = """comfyui-frontend-package==1.35.9
comfyui-workflow-templates==0.7.67
comfyui-embedded-docs==0.3.1
torch
torchsde
torchvision
torchaudio
numpy>=1.25.0
einops
transformers>=4.50.3
tokenizers>=0.13.3
sentencepiece
safetensors>=0.4.2
aiohttp>=3.11.8
yarl>=1.18.0
pyyaml
Pillow
scipy
tqdm
psutil
alembic
SQLAlchemy
av>=14.2.0
comfy-kitchen>=0.2.3

#non essential dependencies:
kornia>=0.7.1
spandrel
pydantic~=2.0
pydantic-settings~=2.0
"""
NMS = "RuntimeError: operator torchvision::nms does not exist"
CUDA_TORCH = {"torch": "2.9.1+cu124", "cuda": "12.4", "hip": None, "gpu": True}
CPU_TORCH = {"torch": "2.12.1+cpu", "cuda": None, "hip": None, "gpu": False}


@pytest.fixture
def site(tmp_path):
    with ArtifactServer() as server:
        yield make_site(server, tmp_path)


@pytest.fixture(autouse=True)
def no_pip_configuration(monkeypatch):
    without_pip_configuration(monkeypatch)


def report(device=None, **changes) -> dict:
    """envcheck.py's report of a whole venv, with `changes`."""
    device = device or CPU_TORCH
    whole = {"versions": {"torch": device["torch"], "torchvision": "0.24.1", "torchaudio": None}, "broken": {},
             "device": device, "missing": [], "mismatched": [], "unreadable": []}
    return {**whole, **changes}


def install(site, tmp_path, runner=None, probe=None, **options) -> Installer:
    hooks = hooks_for(tmp_path, runner or FakeRunner(), **({"probe": probe} if probe else {}))
    installer = Installer(options_for(site, tmp_path, start=False, skip_models=True, **options), hooks)
    installer.run()
    return installer


def again(site, tmp_path, checks, torch_found=None, probe=None, reports=None) -> tuple:
    """A second run over an installed folder whose venv envcheck.py describes with `checks`."""
    install(site, tmp_path, FakeRunner(torch_found=torch_found), probe=probe)
    runner = FakeRunner(torch_found=torch_found)
    runner.checks = checks
    extra = {"probe": probe} if probe else {}
    if reports is not None:
        extra["report"] = lambda state, states: reports.append((state.name, state.message))
    installer = Installer(options_for(site, tmp_path, start=False, skip_models=True), hooks_for(tmp_path, runner,
                                                                                               **extra))
    return installer, runner


def commands_after_the_check(runner) -> list:
    """What the environment step ran, after the check step's one look at the venv (and, when
    PyTorch is to be installed, at pip's configuration)."""
    assert runner.commands[0][2] == str(CHECK_SCRIPT)
    return [command for command in runner.commands[1:] if command[1:5] != ["-m", "pip", "config", "list"]]


def test_torch_packages_are_kept_out_of_comfyuis_requirements_and_torchaudio_is_never_installed(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(COMFYUI_080_REQUIREMENTS)
    runner = FakeRunner()
    env = Environment(layout=Layout(tmp_path / "install", "linux"), build=build_for("cpu", "test"),
                      base_python=sys.executable, run=runner, say=lambda *a: None, tick=lambda: None)
    env.set_up(requirements)
    torch, comfyui = runner.pip_installs()[1:]
    assert torch[4:] == ["torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert comfyui[4:6] == ["-r", str(env.filtered_requirements)]
    read = [line for line in env.filtered_requirements.read_text().splitlines() if line and not line.startswith("#")]
    assert not {"torch", "torchvision", "torchaudio"} & set(read) and {"torchsde", "pydantic~=2.0"} <= set(read)
    assert not any("torchaudio" in command for command in runner.pip_installs())


def test_a_whole_venv_is_checked_once_and_the_plan_says_it_is_whole(site, tmp_path):
    installer, runner = again(site, tmp_path, [report()])
    installer.run()
    assert len(runner.commands) == 1 and installer.state("environment").status == "skipped"
    assert installer.plan["environment"] == {"ready": True, "repairs": [], "torch_from": None, "notes": []}


def test_a_torchvision_that_does_not_match_torch_is_reinstalled_with_torch_from_the_builds_index(site, tmp_path):
    installer, runner = again(site, tmp_path, [report(broken={"torchvision": NMS}), report()])
    installer.run()
    assert f"ComfyUI's environment will be repaired: reinstall torchvision ({NMS})" in installer.plan["warnings"]
    force, torch, freeze, check = commands_after_the_check(runner)  # no new venv, no requirements
    index = ["--index-url", "https://download.pytorch.org/whl/cpu"]
    assert force[3:] == ["install", "--force-reinstall", "--no-deps", "torch", "torchvision", *index]
    assert torch[3:] == ["install", "torch", "torchvision", *index]
    assert freeze[1] == "-c" and check[2] == str(CHECK_SCRIPT)
    assert installer.state("environment").message.startswith(f"repaired (reinstall torchvision ({NMS})); PyTorch")


def test_an_installed_torchaudio_is_reinstalled_with_them(site, tmp_path):
    versions = {"torch": "2.12.1+cpu", "torchvision": "0.27.1", "torchaudio": "2.11.0"}
    installer, runner = again(site, tmp_path, [report(versions=versions, broken={"torchaudio": "OSError: x"}),
                                               report()])
    installer.run()
    assert commands_after_the_check(runner)[0][6:9] == ["torch", "torchvision", "torchaudio"]


def test_a_cpu_torch_in_a_cuda_venv_is_replaced_by_the_cuda_build(site, tmp_path):
    installer, runner = again(site, tmp_path, [report(CPU_TORCH), report(CUDA_TORCH)], torch_found=CUDA_TORCH,
                              probe=nvidia_machine)
    installer.run()
    assert installer.plan["environment"]["repairs"] == ["reinstall torch (PyTorch 2.12.1+cpu has no CUDA support)"]
    assert commands_after_the_check(runner)[0][-1] == "https://download.pytorch.org/whl/cu124"


def test_missing_and_mismatched_requirements_are_installed_keeping_the_torch_constraints(site, tmp_path):
    broken = report(missing=["av>=14.2.0"], mismatched=[{"requirement": "numpy>=1.25.0", "installed": "1.24.4"}])
    installer, runner = again(site, tmp_path, [broken, report()])
    installer.run()
    assert installer.plan["environment"]["repairs"] == ["install av>=14.2.0", "install numpy>=1.25.0 (1.24.4 is "
                                                                                "installed)"]
    requirements, check = commands_after_the_check(runner)  # torch is left alone: pinned as the check found it
    constraints = installer.layout.venv_dir / "torch-constraints.txt"
    assert requirements[3:] == ["install", "av>=14.2.0", "numpy>=1.25.0", "-c", str(constraints)]
    assert constraints.read_text() == "torch==2.12.1+cpu\ntorchvision==0.24.1\n"


def test_a_repair_that_does_not_take_fails_with_what_is_still_wrong_and_the_log(site, tmp_path):
    installer, _ = again(site, tmp_path, [report(missing=["av>=14.2.0"])])
    with pytest.raises(InstallError) as error:
        installer.run()
    assert error.value.step == "environment" and "still incomplete after installing: install av>=14.2.0" in \
        error.value.cause
    assert str(installer.layout.install_log) in error.value.fix


def test_a_venv_whose_python_no_longer_runs_is_made_again(site, tmp_path):
    dead = Completed(1, "Could not find platform independent libraries <prefix>\n"
                        "ModuleNotFoundError: No module named 'encodings'\n")
    installer, runner = again(site, tmp_path, [dead, report()])
    installer.run()
    assert installer.plan["environment"]["repairs"] == [
        "make the venv again (its python does not run: ModuleNotFoundError: No module named 'encodings')"]
    assert commands_after_the_check(runner)[0][1:3] == ["-m", "venv"]


def test_the_users_pip_configuration_chooses_where_torch_comes_from_and_the_plan_says_so(
        site, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    runner = FakeRunner(torch_found=CUDA_TORCH)
    installer = install(site, tmp_path, runner, probe=nvidia_machine)
    assert not any("--index-url" in command or "--isolated" in command for command in runner.commands)
    assert installer.plan["environment"]["torch_from"] == "your pip configuration (PIP_INDEX_URL)"
    assert "PyTorch (cu124) will be installed from your pip configuration (PIP_INDEX_URL), not https://download." \
           "pytorch.org/whl/cu124; the check after the install still refuses a build without CUDA support" in \
           installer.plan["warnings"]


def test_pip_config_list_of_the_base_python_is_read_when_no_variable_decides(site, tmp_path):
    runner = FakeRunner()
    runner.pip_config = "global.index-url='https://mirror.example/simple'\n"
    installer = install(site, tmp_path, runner, python=sys.executable)
    assert [sys.executable, "-m", "pip", "config", "list"] in runner.commands
    assert not any("--index-url" in command for command in runner.pip_installs())
    assert installer.plan["environment"]["torch_from"] == "your pip configuration (global.index-url)"


def test_comfy_torch_index_url_points_torch_at_a_mirror_and_only_torch(site, tmp_path, monkeypatch):
    monkeypatch.setenv("COMFY_TORCH_INDEX_URL", "https://mirror.example/whl/")
    runner = FakeRunner()
    installer = install(site, tmp_path, runner)
    torch, requirements = runner.pip_installs()[1:]
    assert torch[-2:] == ["--index-url", "https://mirror.example/whl/cpu"] and "--index-url" not in requirements
    assert "PyTorch (cpu) will be installed from https://mirror.example/whl/cpu (COMFY_TORCH_INDEX_URL)" in \
        installer.plan["warnings"]


def test_a_pip_that_cannot_be_updated_is_noted_and_the_install_goes_on(site, tmp_path):
    installer = install(site, tmp_path, FakeRunner(fail="--upgrade pip"))
    assert installer.state("environment").status == "done"
    assert "note: pip could not be updated (ERROR: simulated failure); going on with the pip the venv came with" in \
        installer.layout.install_log.read_text()


class OfflineRunner(FakeRunner):
    """pip cannot reach download.pytorch.org: the retry warnings older pips print, then its errors."""

    def __call__(self, args, **options):
        if "torchvision" not in args:
            return super().__call__(args, **options)
        self.commands.append([str(a) for a in args])
        for attempt in (4, 3):
            options["on_line"](f"WARNING: Retrying (Retry(total={attempt}, connect=None, read=None, redirect=None, "
                               "status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3."
                               "connection.HTTPSConnection object at 0x7f3a2c1d0>: Failed to establish a new "
                               "connection: [Errno 111] Connection refused')': /whl/cpu/torch/")
        options["on_line"]("ERROR: Could not find a version that satisfies the requirement torch (from versions: none)")
        options["on_line"]("ERROR: No matching distribution found for torch")
        return Completed(1, "ERROR: No matching distribution found for torch\n")


def test_an_unreachable_index_fails_naming_the_host_and_the_log_and_shows_no_raw_retry_line(site, tmp_path):
    messages = []
    hooks = hooks_for(tmp_path, OfflineRunner(), report=lambda state, states: messages.append(state.message))
    installer = Installer(options_for(site, tmp_path, start=False, skip_models=True), hooks)
    with pytest.raises(InstallError) as error:
        installer.run()
    assert error.value.cause == ("Installing PyTorch (cpu) failed (exit code 1): could not reach download.pytorch.org "
                                 "(Connection refused), so no torch could be found")
    assert str(installer.layout.install_log) in error.value.fix and "COMFY_TORCH_INDEX_URL" in error.value.fix
    assert "pip cannot reach download.pytorch.org yet; retrying" in messages
    assert not any(message.startswith("WARNING: Retrying") for message in messages)
    assert installer.layout.install_log.read_text().count("WARNING: Retrying (Retry(total=") == 2  # whole, in the log


def test_every_command_of_an_install_is_in_its_log_with_its_exit_code(site, tmp_path):
    runner = FakeRunner()
    installer = install(site, tmp_path, runner)
    log = installer.layout.install_log.read_text()
    assert log.count("] $ ") == len(runner.commands) >= 5 and log.count("] exit code ") == len(runner.commands)
    assert f"$ {installer.layout.python} -I {CHECK_SCRIPT}" in log
    assert json.loads((installer.layout.venv_dir / "comfy-hybrid-env.json").read_text())["torch_from"] == \
        "https://download.pytorch.org/whl/cpu"
