"""Installer tasks (the one-click local ComfyUI installer issue)."""
