"""envcheck.py, run for real by a venv's python the way the installer runs it (`python -I
envcheck.py REQUIREMENTS`): a venv made here, stand-in torch packages with real metadata, and
the test interpreter's own packages (requests, packaging...) for the requirements."""
import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

from workers.installer.environment import CHECK_SCRIPT

TORCH = """__version__ = '2.9.1+cpu'
class version:
    cuda = None
    hip = None
class cuda:
    @staticmethod
    def is_available():
        return False
class backends:
    mps = None
"""
# What torchvision raises when it was built for another torch (its C++ operators fail to register).
MISMATCHED_TORCHVISION = "import torch\nraise RuntimeError('operator torchvision::nms does not exist')\n"


@pytest.fixture
def venv(tmp_path) -> Path:
    """A venv (no pip) that also sees this interpreter's packages, through a .pth file."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    packages = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    (packages / "test-interpreter.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return tmp_path / "venv"


def install(venv: Path, name: str, version: str, code: str, requires=()) -> None:
    packages = next((venv / "lib").glob("python3*/site-packages"))
    (packages / name).mkdir()
    (packages / name / "__init__.py").write_text(code)
    info = packages / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))


def check(venv: Path, requirements: str = "") -> dict:
    args = [str(venv / "bin" / "python"), "-I", str(CHECK_SCRIPT)]
    if requirements:
        path = venv / "requirements.txt"
        path.write_text(requirements)
        args.append(str(path))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_whole_torch_reports_its_versions_and_device(venv):
    install(venv, "torch", "2.9.1+cpu", TORCH)
    install(venv, "torchvision", "0.24.1+cpu", "import torch\n")
    report = check(venv)
    assert report["broken"] == {} and report["versions"] == {"torch": "2.9.1+cpu", "torchvision": "0.24.1+cpu",
                                                              "torchaudio": None}
    assert report["device"] == {"torch": "2.9.1+cpu", "cuda": None, "hip": None, "gpu": False}


@pytest.mark.slow
def test_a_torchvision_built_for_another_torch_is_reported_with_its_error(venv):
    install(venv, "torch", "2.9.1+cpu", TORCH)
    install(venv, "torchvision", "0.23.0+cpu", MISMATCHED_TORCHVISION)
    assert check(venv)["broken"] == {"torchvision": "RuntimeError: operator torchvision::nms does not exist"}


@pytest.mark.slow
def test_torch_and_torchvision_must_be_there_and_torchaudio_only_when_installed(venv):
    assert check(venv)["broken"] == {"torch": "not installed", "torchvision": "not installed"}
    install(venv, "torchaudio", "2.9.1+cpu", "raise ImportError('libtorchaudio.so: undefined symbol')\n")
    assert check(venv)["broken"]["torchaudio"] == "ImportError: libtorchaudio.so: undefined symbol"


@pytest.mark.slow
def test_each_requirement_is_compared_with_the_version_installed(venv):
    import packaging
    import requests

    report = check(venv, "\n".join([
        "# a comment line, then a blank one", "",
        f"requests>={requests.__version__}  # an inline comment",
        f"packaging~={packaging.__version__.split('.')[0]}.0",
        "packaging~=1.0",  # ~= that the installed version does not meet
        "requests<1",
        "comfy-hybrid-not-installed>=1.0",
        "comfy-hybrid-also-missing ; python_version >= '3'",
        "comfy-hybrid-skipped ; python_version < '3'",  # a marker that does not apply here
        "torch", "torchvision>=0.1", "torchaudio",  # the torch packages are checked apart
        "-r other-requirements.txt", "--extra-index-url https://mirror.example/simple",
        "this is not a requirement",
    ]))
    assert report["missing"] == ["comfy-hybrid-not-installed>=1.0", "comfy-hybrid-also-missing ; python_version >= '3'"]
    assert report["mismatched"] == [{"requirement": "packaging~=1.0", "installed": packaging.__version__},
                                    {"requirement": "requests<1", "installed": requests.__version__}]
    assert report["unreadable"] == ["this is not a requirement"]


@pytest.mark.slow
def test_a_requirement_with_an_extra_needs_what_the_extra_brings(venv):
    install(venv, "comfy_hybrid_base", "1.0", "", requires=["comfy-hybrid-extra-dep>=2; extra == 'video'",
                                                           "packaging"])
    assert check(venv, "comfy_hybrid_base\n")["missing"] == []
    assert check(venv, "comfy_hybrid_base[video]\n")["missing"] == ["comfy_hybrid_base[video]"]
    install(venv, "comfy_hybrid_extra_dep", "2.1", "")
    assert check(venv, "comfy_hybrid_base[video]>=1.0\n")["missing"] == []
