"""`python -m workers.installer`: the installer without Django (the bootstrap scripts run this).

    python -m workers.installer install [--path DIR] [--skip-models] [--no-service] [--no-start] [--yes] ...
    python -m workers.installer check   [--path DIR] [--json]
    python -m workers.installer stop    [--path DIR]
"""
import argparse
import json
import sys

from . import gpusteps
from .console import ConsoleReporter, CtrlCPauses, confirm_on_terminal, describe_plan
from .errors import Cancelled, InstallError, Paused
from .pipeline import Hooks, Installer, Options, default_path

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3


def add_install_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every front shares (the Django command adds the same ones)."""
    parser.add_argument("--path", default="", help=f"install folder (default: {default_path()})")
    parser.add_argument("--manifest", default="", help="manifest JSON (default: deploy/comfyui-manifest.json)")
    parser.add_argument("--skip-models", action="store_true", help="do not download the models")
    parser.add_argument("--with-optional", action="store_true", help="also download the optional models")
    parser.add_argument("--verify-all", action="store_true",
                        help="re-hash every model in place (a mismatch is downloaded again), trusting no record")
    parser.add_argument("--no-service", action="store_true", help="no service/startup entry, no shortcut")
    parser.add_argument("--no-start", action="store_true", help="do not start ComfyUI (nor verify it)")
    parser.add_argument("--system-service", action="store_true",
                        help="Linux: a system unit that starts at boot (needs root; the default as root)")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask before installing")
    parser.add_argument("--host", default="127.0.0.1", help="address ComfyUI listens on")
    parser.add_argument("--port", type=int, default=8188, help="port ComfyUI listens on")
    parser.add_argument("--torch", default="", help="force a PyTorch build: cu128, cu126, rocm7.2, xpu, mps, cpu")
    parser.add_argument("--python", default="", help="Python 3.10+ for ComfyUI's venv (default: this one)")
    parser.add_argument("--gpus", default="",
                        help="one ComfyUI per GPU, each pinned to its GPU, with its own port, service and backend: "
                             "'all' or GPU numbers such as 0,2 (default: one ComfyUI for the whole machine)")


def options_from_args(args) -> Options:
    return Options(path=args.path, manifest=args.manifest, skip_models=args.skip_models,
                   with_optional=args.with_optional, service=not args.no_service,
                   system_service=args.system_service, start=not args.no_start,
                   host=args.host, port=args.port, torch=args.torch, python=args.python,
                   verify_all=args.verify_all, gpus=args.gpus)


def main(argv=None) -> int:
    if sys.version_info < (3, 10):
        print("The installer needs Python 3.10 or newer (ComfyUI does too).", file=sys.stderr)
        return EXIT_FAILED
    parser = argparse.ArgumentParser(prog="python -m workers.installer", description="Install ComfyUI locally.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_install_arguments(commands.add_parser("install", help="install (or resume, or repair) ComfyUI"))
    check = commands.add_parser("check", help="show what an install would do here")
    add_install_arguments(check)
    check.add_argument("--json", action="store_true", help="print the plan as JSON")
    stop = commands.add_parser("stop", help="stop the ComfyUI this installer started")
    stop.add_argument("--path", default="")
    args = parser.parse_args(argv)
    return {"install": _install, "check": _check, "stop": _stop}[args.command](args)


def _install(args) -> int:
    if not args.yes and not sys.stdin.isatty():
        print("Nothing asked: pass --yes to install without a prompt.", file=sys.stderr)
        return EXIT_FAILED
    with CtrlCPauses() as control:
        hooks = Hooks(report=ConsoleReporter(), control=control,
                      confirm=None if args.yes else confirm_on_terminal())
        return run_and_report(Installer(options_from_args(args), hooks))


def run_and_report(installer: Installer, out=None) -> int:
    out = out or sys.stdout
    try:
        installer.run()
    except InstallError as error:
        print(f"\n{error}", file=sys.stderr)
        return EXIT_FAILED
    except Paused:
        print("\nPaused. Run the same command again to continue from where it stopped.", file=out)
        return EXIT_STOPPED
    except Cancelled:
        print("\nCancelled. Nothing was changed in place.", file=out)
        return EXIT_STOPPED
    print(f"\n{installer.outcome()}", file=out)
    return EXIT_OK


def _check(args) -> int:
    installer = Installer(options_from_args(args))
    try:
        plan = installer.check()
    except InstallError as error:
        plan = installer.plan
        print(str(error), file=sys.stderr)
        if plan is None:
            return EXIT_FAILED
    print(json.dumps(plan, indent=2) if args.json else describe_plan(plan))
    return EXIT_OK


def _stop(args) -> int:
    stopped = gpusteps.stop_all(Installer(Options(path=args.path)).layout)
    print(f"Stopped {stopped} ComfyUI." if stopped else "No ComfyUI started by the installer is running.")
    return EXIT_OK
