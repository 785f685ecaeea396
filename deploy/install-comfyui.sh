#!/bin/sh
# Install ComfyUI for Comfy Hybrid on Linux or macOS (see deploy/INSTALLER.md).
#
#   deploy/install-comfyui.sh [--path DIR] [--skip-models] [--no-service] [--no-start] [--yes] ...
#
# Finds Python 3.10+ (installing it with the system's package manager if needed), makes a
# small venv holding only `requests`, and runs the installer core from this checkout
# (python -m workers.installer install): no Django needed. Every argument is passed on.
# Running it again resumes or repairs; finished steps are skipped.
set -eu

REPO_DIR=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
VENV_DIR="${COMFY_INSTALLER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/comfy-hybrid/installer-venv}"
REQUESTS_PIN="requests==2.34.2"  # the same pin as requirements.txt

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $1"; say "what to do: $2"; exit 1; }

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1
}

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3.10 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            # The interpreter itself, not a launcher or shim, so ComfyUI's venv is tied to it.
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

install_python() {
    case "$(uname -s)" in
        Darwin)
            command -v brew >/dev/null 2>&1 || die "Python 3.10+ is missing and Homebrew is not installed" \
                "install Python 3.12 from https://www.python.org/downloads/macos/, then run this script again"
            brew install python@3.12 ;;
        Linux)
            SUDO=""
            [ "$(id -u)" -eq 0 ] || SUDO="sudo"
            if command -v apt-get >/dev/null 2>&1; then
                $SUDO apt-get update && $SUDO apt-get install -y python3 python3-venv python3-pip
            elif command -v dnf >/dev/null 2>&1; then
                $SUDO dnf install -y python3 python3-pip
            elif command -v pacman >/dev/null 2>&1; then
                $SUDO pacman -Sy --noconfirm python python-pip
            elif command -v zypper >/dev/null 2>&1; then
                $SUDO zypper install -y python3 python3-pip
            else
                die "Python 3.10+ is missing and no known package manager was found" \
                    "install Python 3.10 or newer, then run this script again"
            fi ;;
        *)
            die "this script is for Linux and macOS ($(uname -s) found)" "on Windows, run deploy\\install-comfyui.ps1" ;;
    esac
}

PYTHON=$(find_python) || {
    say "Python 3.10 or newer was not found: installing it."
    install_python
    PYTHON=$(find_python) || die "the system's Python is older than 3.10" \
        "install Python 3.10+ (Ubuntu 20.04: the deadsnakes PPA; elsewhere python.org), then run this script again"
}
say "Using $PYTHON ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])'))"

if [ ! -x "$VENV_DIR/bin/python" ]; then
    mkdir -p "$(dirname "$VENV_DIR")"
    "$PYTHON" -m venv "$VENV_DIR" || die "could not create a virtual environment with $PYTHON" \
        "on Debian/Ubuntu install python3-venv (sudo apt-get install python3-venv), then run again"
fi
"$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "$REQUESTS_PIN" || \
    die "could not install $REQUESTS_PIN into $VENV_DIR" "check the connection to PyPI, then run again"

# ComfyUI's own venv is made from the system Python found above (a later --python wins).
PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV_DIR/bin/python" -m workers.installer install \
    --python "$PYTHON" "$@"
