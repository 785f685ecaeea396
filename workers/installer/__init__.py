"""The one-click local ComfyUI installer (issue 7; user guide: deploy/INSTALLER.md).

Pure Python, runnable without Django (`python -m workers.installer`). Only `adapter.py`
imports Django: it connects the installer to the InstallRun row for the Celery task and
the management command.

Modules: detect/ (GPU detection parsers and the live probe), torchbuild (the PyTorch build
table), manifest, download (resumable, verified), archive (safe extraction), environment
(venv + PyTorch, checked each run by envcheck.py and repaired), runner + children + commandlog
(commands in their own process group, ended with the installer, logged), pipoutput (pip's
lines for a person), autostart (scripts, services, shortcuts), launch (start + /system_stats),
plan, steps, pipeline (the Installer), console + cli (terminal front).
"""
