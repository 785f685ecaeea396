"""The one-click local ComfyUI installer (issue 7; user guide: deploy/INSTALLER.md).

Pure Python, runnable without Django (`python -m workers.installer`). Only `server/` imports
Django: the InstallRun row, its services, the Local GPU page, the Celery task, and the adapter
that connects the installer to that row (for the task and the management command).

Modules: detect/ (GPU detection parsers and the live probe), torchbuild (the PyTorch build
table), manifest, download (resumable, verified), archive (safe extraction), environment
(venv + PyTorch, checked each run by envcheck.py and repaired), runner + children + commandlog
(commands in their own process group, ended with the installer, logged), pipoutput (pip's
lines for a person), autostart + servicefiles (scripts, services, shortcuts), launch (start +
/system_stats), gpus + gpusteps (one ComfyUI per GPU), plan, steps, pipeline (the Installer),
console + cli (terminal front), volume (fills a RunPod network volume on a sync pod).
"""
