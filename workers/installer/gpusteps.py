"""What the steps do for one ComfyUI per GPU (`--gpus`, gpus.py): the plan, each other GPU's
services, verifying each, registering their backends. The install's own ComfyUI, the first
chosen GPU's, goes through the steps as it always has; these parts follow it in each step.

The state keeps `gpus` = {"asked": <--port>, "instances": [{gpu, port, backend, service,
worker}]}: what a later run keeps (the ports) or takes away (a GPU no longer chosen, or
everything with --no-service), and `gpu_backends`, the backends the register step made.
"""
from . import autostart, gpus, identity, launch
from .autostart import Launch
from .errors import Failure


def plan(inst) -> None:
    """Check step: the GPUs (a wrong --gpus fails here, before anything is downloaded) and a free
    port for each other one. Remembered ports are taken first, so a re-run never hands one GPU's
    port, where its ComfyUI still answers, to another GPU."""
    inst.pins, note = gpus.choose(inst.system, inst.build, inst.options.gpus)
    if note:
        inst.plan["warnings"].append(note)
    state, taken = inst.layout.read_state(), {inst.port}
    remembered = {pin.index: gpus.remembered_port(state, pin.index, inst.options.port) for pin in inst.pins[1:]}
    for pin in sorted(inst.pins[1:], key=lambda pin: remembered[pin.index] is None):
        port, _ = identity.choose_port(inst.options.host, max(taken) + 1, inst.layout, remembered[pin.index],
                                       avoid=taken)
        inst.gpu_ports[pin.index] = port
        taken.add(port)
    inst.plan["gpus"] = [{**pin.as_dict(), "backend": pin.backend(first=number == 0),
                          "port": inst.gpu_ports.get(pin.index, inst.port)} for number, pin in enumerate(inst.pins)]
    _warn_about_workers(inst)


def summary(plan: dict) -> str:
    """The check step's words about the GPUs ("" without --gpus)."""
    chosen = ", ".join(f"GPU {item['index']} on port {item['port']} ({item['backend']})" for item in plan["gpus"])
    return f"; one ComfyUI per GPU: {chosen}" if plan["gpus"] else ""


def _warn_about_workers(inst) -> None:
    os_name = inst.layout.os_name
    if len(inst.pins) > 1 and not gpus.venv_python(os_name).exists():
        inst.plan["warnings"].append(
            f"the GPU workers will run {gpus.project_python(os_name)}, not the project's virtualenv "
            f"({gpus.venv_python(os_name)}, made by `make setup`): they need Django and Celery")


def services(inst, scope) -> str:
    """Service step: each other GPU's start scripts and, unless --no-service, the services of its
    ComfyUI and of its worker. What an earlier run set up for a GPU no longer chosen is taken away
    (services, start scripts, a ComfyUI it started); with --no-service every GPU's services are."""
    chosen = {pin.index for pin, _ in inst.gpu_launches}
    earlier = gpus.previous(inst.layout.read_state())
    removed = _take_away(inst, [item for item in earlier if item.get("gpu") not in chosen], dropped=True)
    if not inst.options.service:
        removed += _take_away(inst, [item for item in earlier if item.get("gpu") in chosen], dropped=False)
    by_gpu = {item.get("gpu"): item for item in earlier}
    records = [_set_up(inst, pin, target, scope, by_gpu.get(pin.index) or {}) for pin, target in inst.gpu_launches]
    inst.layout.update_state(gpus={"asked": inst.options.port, "instances": records})
    done = "".join(f"; GPU {record['gpu']}: ComfyUI on port {record['port']}, backend {record['backend']}"
                   + (f" ({record['service']['name']} and its worker {record['worker']['name']})"
                      if record["service"].get("name") else "") for record in records)
    return done + (f"; removed what an earlier run set up for GPUs ({', '.join(removed)})" if removed else "")


def _set_up(inst, pin, target: Launch, scope, earlier: dict) -> dict:
    worker = inst.worker(pin, target)
    autostart.write_start_script(target)
    autostart.write_start_script(worker)
    record = {"gpu": pin.index, "port": target.port, "backend": worker.backend, "service": {}, "worker": {},
              "worker_started_for": earlier.get("worker_started_for", "") if inst.options.service else ""}
    if inst.options.service:
        for key, what in (("service", target), ("worker", worker)):
            record[key] = autostart.register(what, inst.hooks.home, inst.hooks.run, scope=scope).record()
    return record


def _take_away(inst, items: list, *, dropped: bool) -> list:
    """Unregister the services of `items`; `dropped` (the GPU is no longer chosen): also stop the
    ComfyUI an earlier run started for it and delete its start scripts."""
    removed = []
    for item in items:
        for key in ("service", "worker"):
            removed += autostart.unregister(item.get(key) or {}, inst.hooks.run)
        if dropped:
            removed += _forget(inst, item)
    return removed


def _recorded(layout, host: str, item: dict) -> Launch:
    """An earlier run's GPU ComfyUI, from its state record: enough to find its pid file and scripts."""
    return Launch(layout, host, item.get("port") or 0, cpu_only=False, instance=f"gpu{item['gpu']}")


def _forget(inst, item: dict) -> list:
    old = _recorded(inst.layout, inst.options.host, item)
    launch.stop(old)
    worker = inst.worker(gpus.Pin(item["gpu"], "", ()), old)
    scripts = [path for path in (old.start_script, worker.start_script) if path.exists()]
    for path in scripts:
        path.unlink()
    return [str(path) for path in scripts]


def verify(inst, r, verify_one) -> list:
    """Verify step: each other GPU's ComfyUI answers /system_stats (started by its service, or
    detached with --no-service); returns a line for each, naming the device it sees."""
    records = {item.get("gpu"): item for item in gpus.previous(inst.layout.read_state())}
    lines = []
    for pin, target in inst.gpu_launches:
        record = records.get(pin.index) or {}
        stats, note = verify_one(inst, target, record.get("service") or {}, r)
        inst.gpu_stats[pin.index] = stats
        lines.append(f"GPU {pin.index}: " + answered(stats, target, note) + _start_worker(inst, pin, target, record))
    return lines


def _start_worker(inst, pin, target: Launch, record: dict) -> str:
    """Its worker's service, started once its ComfyUI answers: restarted when it was last started
    for another URL (or never by the installer), else only started if it is not running, since a
    worker restarted for nothing leaves the fleet for a moment and its jobs in flight move."""
    service = record.get("worker") or {}
    if not service.get("start_command"):
        return f"; start its worker with {inst.worker(pin, target).start_script}"
    if record.get("worker_started_for") == target.url and service.get("ensure_command"):
        done = inst.hooks.run(service["ensure_command"], timeout=60)  # NSSM says so when it already runs
        return f"; its worker {service['name']} runs" if done.code == 0 else \
            f"; its worker {service['name']} did not say it runs ({done.output.strip()[-200:]})"
    done = inst.hooks.run(service["start_command"], timeout=60)
    if done.code != 0:
        raise Failure(f"`{' '.join(service['start_command'])}` failed, so the worker of {record['backend']} is not "
                      f"running: {done.output.strip()[-300:]}",
                      "run it yourself to see why, or re-run with --no-service")
    _remember(inst, pin.index, worker_started_for=target.url)
    return f"; its worker {service['name']} runs"


def _remember(inst, index: int, **changes) -> None:
    state = inst.layout.read_state()
    instances = [{**item, **changes} if item.get("gpu") == index else item for item in gpus.previous(state)]
    inst.layout.update_state(gpus={**state.get("gpus", {}), "instances": instances})


def device_of(stats: dict) -> dict:
    """The device a ComfyUI reports it runs on (/system_stats lists the one it uses)."""
    return (stats.get("devices") or [{}])[0]


def answered(stats: dict, target: Launch, note: str = "") -> str:
    device = device_of(stats)
    return (f"ComfyUI {stats['system'].get('comfyui_version', '?')} of {target.layout.comfy_dir} answers at "
            f"{target.url}/system_stats (device: {device.get('name', '?')}){note}")


def register(inst) -> str:
    """Register step: each other GPU's backend (kind comfyui, category local) gets its verified URL;
    the backends of GPUs this install no longer serves are taken out of the fleet."""
    backends = [_backend(pin, target, inst.gpu_stats[pin.index]) for pin, target in inst.gpu_launches
                if pin.index in inst.gpu_stats]
    names = {pin.backend(first=False) for pin, _ in inst.gpu_launches}
    retired = sorted(set(inst.layout.read_state().get("gpu_backends") or []) - names)
    if not backends and not retired:
        return ""
    if inst.hooks.register_gpus is None:
        listed = ", ".join(backend["name"] for backend in backends) or "none"
        return (f"; no Comfy Hybrid database here: the GPU workers register their backends ({listed}) when they "
                "start")
    message = inst.hooks.register_gpus(backends, retired)
    inst.layout.update_state(gpu_backends=sorted(backend["name"] for backend in backends))
    return f"; {message}"


def _backend(pin, target: Launch, stats: dict) -> dict:
    device = device_of(stats)
    return {"name": pin.backend(first=False), "url": target.url, "gpu": device.get("name", ""),
            "vram_total": device.get("vram_total")}


def stop_all(layout, host: str = "127.0.0.1") -> int:
    """`python -m workers.installer stop`: the ComfyUIs the installer started detached, every GPU's."""
    extra = [_recorded(layout, host, item) for item in gpus.previous(layout.read_state())]
    return sum(launch.stop(target) for target in [Launch(layout, host, 8188, cpu_only=False), *extra])
