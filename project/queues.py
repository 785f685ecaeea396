"""Queue names, declared once. Every task names its queue from here (DESIGN.md, Queues)."""

CONTROL = "control"  # routing, health checks, reaper, autoscaler, sweeper
LOCAL = "local"  # the local ComfyUI and the installer, on the GPU machine
CLOUD = "cloud"  # RunPod serverless and pods
GEMINI = "gemini"  # Google Gemini requests and long-running operation polls
# Job webhooks, by their own worker: a receiver is the user's server, as slow as it likes; on
# `control` sixty slow deliveries held everyone's routing for minutes.
WEBHOOKS = "webhooks"

ALL = (CONTROL, LOCAL, CLOUD, GEMINI, WEBHOOKS)
