"""Is ComfyUI's venv whole? Run by the venv's own python, never imported by the installer:

    <venv>/bin/python -I envcheck.py [REQUIREMENTS]

(-I keeps this folder, whose module names could shadow real packages, off sys.path). It uses
only the standard library and `packaging` (pip's vendored copy in a venv that lacks it), and
prints one JSON line:

    {"versions":   {"torch": "2.9.1+cu128", "torchvision": "0.24.1+cu128", "torchaudio": null},
     "broken":     {"torchvision": "RuntimeError: operator torchvision::nms does not exist"},
     "device":     {"torch": "2.9.1+cu128", "cuda": "12.8", "hip": null, "gpu": true} or null,
     "missing":    ["av>=14.2.0"],
     "mismatched": [{"requirement": "numpy>=1.25.0", "installed": "1.24.4"}],
     "damaged":    [{"requirement": "av>=14.2.0", "name": "av", "installed": "14.4.0",
                     "file": "av/__init__.py"}],
     "unreadable": ["a line packaging cannot parse"]}

torch and torchvision must import; torchaudio is optional (ComfyUI runs without it) and is
checked only when installed. Each requirement of REQUIREMENTS (comments, option lines and
the torch packages skipped, environment markers evaluated) must be installed at a version
its specifier allows, and the packages its extras ask for must be installed too. Installed
means its files are there, not only its metadata: a package whose folder was deleted (its
dist-info still claims it) is "damaged", and pip would call it "already satisfied".
"""
import importlib
import importlib.metadata as metadata
import json
import sys

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # a venv with only pip in it
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
OPTIONAL = ("torchaudio",)


def installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_packages():
    versions, broken = {name: installed(name) for name in TORCH_PACKAGES}, {}
    for name in TORCH_PACKAGES:
        if versions[name] is None:
            if name not in OPTIONAL:
                broken[name] = "not installed"
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure to import is the finding
            broken[name] = (f"{type(error).__name__}: {error}".strip().splitlines() or ["?"])[0][:300]
    return versions, broken


def device():
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    gpu = torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
            "gpu": gpu}


def requirement_lines(path):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.split(" #", 1)[0].strip()
            if text and not text.startswith(("#", "-")):
                yield text


def problem_with(requirement, depth=0):
    """None when installed as required, else ("missing", None) or ("mismatched", version).
    Extras are followed a few levels down (pkg[all] may ask for pkg[socks]), never in a loop."""
    version = installed(requirement.name)
    if version is None:
        return "missing", None
    if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
        return "mismatched", version
    for needed in extra_requirements(requirement) if depth < 3 else ():
        if problem_with(needed, depth + 1):
            return "missing", None  # `pip install name[extra]` brings it
    return None


def missing_file(name):
    """The first file the distribution recorded at install time that is gone (byte-code and
    caches aside), or None. One stat per file: cheap next to importing it."""
    for recorded in metadata.files(name) or ():
        path = str(recorded)
        if path.endswith((".pyc", ".pyo")) or "__pycache__" in path or path.endswith(".dist-info/RECORD"):
            continue
        if not recorded.locate().exists():
            return path
    return None


def extra_requirements(requirement):
    """What the requirement's extras add to its package's own requirements."""
    found = []
    for text in metadata.requires(requirement.name) or []:
        needed = Requirement(text)
        if needed.marker and any(needed.marker.evaluate({"extra": extra}) for extra in requirement.extras) \
                and not needed.marker.evaluate({"extra": ""}):
            found.append(needed)
    return found


def requirements(path):
    report = {"missing": [], "mismatched": [], "damaged": [], "unreadable": []}
    for text in requirement_lines(path):
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            report["unreadable"].append(text)
            continue
        if requirement.name.lower() in TORCH_PACKAGES or (requirement.marker and not requirement.marker.evaluate()):
            continue
        problem = problem_with(requirement)
        gone = None if problem else missing_file(requirement.name)
        if gone:
            report["damaged"].append({"requirement": text, "name": requirement.name,
                                      "installed": installed(requirement.name), "file": gone})
        elif problem and problem[0] == "missing":
            report["missing"].append(text)
        elif problem:
            report["mismatched"].append({"requirement": text, "installed": problem[1]})
    return report


def main(argv):
    versions, broken = torch_packages()
    report = {"versions": versions, "broken": broken, "device": device()}
    report.update(requirements(argv[1]) if len(argv) > 1 else {"missing": [], "mismatched": [], "damaged": [],
                                                               "unreadable": []})
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv)
