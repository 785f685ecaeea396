"""The shape between the files: the import contracts in .importlinter hold, and no import hides
inside a function to dodge a cycle (issue 21). Neither needs Django, Redis or a worker."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("routing", "billing", "workers", "project")

# Function-level imports that stay, each for a reason other than a cycle:
# (file, function, module imported).
ALLOWED = {
    # Django app loading: apps.py is imported before the models are ready, and these modules
    # import models (routing.models; django_celery_beat's models).
    ("routing/apps.py", "ready", ".defaults"): "app loading",
    ("workers/apps.py", "ready", ".schedules"): "app loading",
    # Only the Flower process loads Flower (and its tornado); workers and the web never do.
    ("project/celery.py", "_flower_only_with_a_password", "tornado.web"): "Flower only",
    ("project/celery.py", "_flower_only_with_a_password", "flower.views"): "Flower only",
    # The installer runs on Windows too: these modules exist on one platform only.
    ("workers/installer/autostart.py", "owner_of", "pwd"): "POSIX only",
    ("workers/installer/layout.py", "_try_lock", "msvcrt"): "Windows only",
    ("workers/installer/layout.py", "_try_lock", "fcntl"): "POSIX only",
    ("workers/installer/layout.py", "_unlock", "msvcrt"): "Windows only",
    ("workers/installer/layout.py", "_unlock", "fcntl"): "POSIX only",
}


def function_level_imports(source: str, path: str) -> set[tuple[str, str, str]]:
    """Every import statement inside a function body, as (path, function, module)."""
    found = set()

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if function and isinstance(child, ast.Import):
                found.update((path, function, alias.name) for alias in child.names)
            elif function and isinstance(child, ast.ImportFrom):
                found.add((path, function, "." * child.level + (child.module or "")))
            visit(child, function)

    visit(ast.parse(source), None)
    return found


def project_function_level_imports() -> set[tuple[str, str, str]]:
    found = set()
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in file.parts:
                found |= function_level_imports(file.read_text(), file.relative_to(ROOT).as_posix())
    return found


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_catch_a_back_edge_even_inside_a_function(tmp_path):
    shutil.copy(ROOT / ".importlinter", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    selectors = tmp_path / "routing" / "selectors.py"
    selectors.write_text(selectors.read_text() + "\n\ndef _dodge():\n    from .services import job_fail\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0 and "routing.selectors is not allowed to import routing.services" in result.stdout


def test_no_import_hides_inside_a_function():
    unexpected = sorted(project_function_level_imports() - set(ALLOWED))
    assert not unexpected, ("Imports inside functions (move them to the top of the module, and if that "
                            "makes a cycle, move the code to the layer it belongs to): "
                            + ", ".join(f"{path} {function}(): {module}" for path, function, module in unexpected))


def test_the_allowlist_names_only_imports_that_still_exist():
    assert not set(ALLOWED) - project_function_level_imports()


def test_it_finds_an_import_inside_a_nested_function():
    source = "import os\n\ndef outer():\n    def inner():\n        from .services import attempt_fail\n"
    assert function_level_imports(source, "x.py") == {("x.py", "inner", ".services")}
