"""The eight steps. Each takes the Installer (options, hooks, layout, what earlier steps
found) and its StepReporter, and ends by calling `finish` (done or skipped) or by raising
Failure / Paused / Cancelled. Every step is a no-op when its work is already done."""
import os
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass

from . import autostart, comfylog, gpusteps, identity, launch, legacy, supervise
from .archive import extract_archive
from .download import Item, file_sha256, partial_bytes
from .environment import Environment
from .errors import Cancelled, Failure
from .gittree import archive_commit, archive_tree
from .layout import RELEASE_MARKER, write_json_atomic
from .manifest import DEFAULT_MANIFEST, load_manifest
from .plan import check_disk, make_plan, model_path, release_installed, summary
from .progress import CANCEL, DONE, SKIPPED, check_control, human_bytes
from .torchbuild import choose_build


def step_check(inst, r) -> None:
    r.update(progress=10, message="Looking for GPUs and drivers")
    inst.manifest = load_manifest(inst.options.manifest or DEFAULT_MANIFEST)
    inst.system = inst.hooks.probe()
    inst.build = choose_build(inst.system, inst.options.torch)
    r.update(progress=60, message="Measuring what is missing and the free disk space")
    models = inst.models
    env = inst.environment(r)
    inst.env_health = env.health(inst.requirements)  # the one check of the venv in this run
    inst.plan = make_plan(layout=inst.layout, manifest=inst.manifest, models=models, system=inst.system,
                          build=inst.build, env_ready=inst.env_health.ready,
                          free=inst.hooks.free_space(inst.layout.root))
    _plan_environment(inst, env)
    _choose_port(inst)
    gpusteps.plan(inst)
    if inst.hooks.on_plan:
        inst.hooks.on_plan(inst.plan)
    check_disk(inst.plan, models)
    if inst.hooks.confirm and not inst.hooks.confirm(inst.plan):
        raise Cancelled()
    r.finish(DONE, summary(inst.plan) + gpusteps.summary(inst.plan)
             + "".join(f". Note: {w}" for w in inst.plan["warnings"]))


def step_download(inst, r) -> None:
    release = inst.manifest.comfyui
    if release_installed(inst.layout, release):
        return r.finish(SKIPPED, f"ComfyUI {release.version} is already installed")
    archive = inst.layout.downloads / release.archive_name
    # A pinned tree is checked on the unpacked content (step_extract): the archive's own
    # bytes may differ from the day the manifest was written, so its SHA-256 only informs.
    wanted = None if release.tree else release.sha256
    item = Item(url=release.url, dest=archive, sha256=wanted, size=release.size, label=f"ComfyUI {release.version}")
    if archive.exists() and (not wanted or file_sha256(archive) == wanted):
        return r.finish(DONE, f"{archive.name} was already downloaded")
    result = inst.downloader(r, "").fetch(item)
    r.finish(DONE, f"downloaded {archive.name}, {human_bytes(archive.stat().st_size)}"
                   f"{_archive_note(release, result.sha256)}")


def _archive_note(release, sha256: str) -> str:
    if release.tree:
        other = f"; its SHA-256 {sha256} differs from the manifest's" if release.sha256 not in (None, sha256) else ""
        return f" (checked against commit {release.commit or '?'}'s files when unpacked{other})"
    return "" if release.sha256 else f" (the manifest has no checksum; its SHA-256 is {sha256})"


def step_extract(inst, r) -> None:
    release = inst.manifest.comfyui
    if release_installed(inst.layout, release):
        return r.finish(SKIPPED, f"ComfyUI {release.version} is already in {inst.layout.comfy_dir}")
    r.update(progress=10, message=f"Unpacking {release.archive_name}")
    archive = inst.layout.downloads / release.archive_name
    if release.tree:
        r.update(progress=5, message=f"Checking that {release.archive_name} is ComfyUI {release.version}'s commit")
        _check_release_tree(archive, release)
    _extract_release(archive, inst.layout.comfy_dir, release.strip_components)
    write_json_atomic(inst.layout.comfy_dir / RELEASE_MARKER,
                      {"version": release.version, "url": release.url, "sha256": release.sha256,
                       "commit": release.commit, "tree": release.tree})
    archive.unlink()  # the tree is what counts; the marker remembers where it came from
    r.finish(DONE, f"ComfyUI {release.version} unpacked into {inst.layout.comfy_dir}")


def _check_release_tree(archive, release) -> None:
    """The archive holds exactly the files of the pinned commit (gittree.py), or it is deleted
    (the next run downloads it afresh) and the install stops before anything is unpacked."""
    recorded = archive_commit(archive)
    try:
        tree = archive_tree(archive, release.strip_components)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        archive.unlink(missing_ok=True)
        raise Failure(f"the archive {archive.name} is damaged ({error})",
                      "run the installer again to download it afresh")
    if tree == release.tree:
        return
    archive.unlink(missing_ok=True)
    which = f"commit {recorded}" if recorded else "no commit id"
    raise Failure(f"{archive.name} is not ComfyUI {release.version}: its files hash to tree {tree}, the manifest "
                  f"pins tree {release.tree} (commit {release.commit or '?'}); the archive records {which}",
                  "run the installer again to download it afresh; if it happens again, the URL serves another "
                  "version: correct the manifest's url, commit and tree (deploy/INSTALLER.md)")


def _extract_release(archive, comfy_dir, strip: int) -> None:
    if comfy_dir.exists():
        raise Failure(f"{comfy_dir} already exists but is not the ComfyUI release of this manifest",
                      "move it away (copy your models back into the new ComfyUI/models afterwards) "
                      "or choose another --path")
    extract_archive(archive, comfy_dir, strip_components=strip)
    if not (comfy_dir / "main.py").exists():
        shutil.rmtree(comfy_dir)
        raise Failure(f"{archive.name} has no main.py: it is not a ComfyUI release", "check the manifest's url")


def step_models(inst, r) -> None:
    if inst.options.skip_models:
        return r.finish(SKIPPED, "skipped (--skip-models)")
    models = inst.models
    if not models:
        return r.finish(SKIPPED, "the manifest lists no models")
    total, done, tally = sum(m.size for m in models), 0, _Tally()
    for artifact in models:
        present = model_path(inst.layout, artifact).exists()
        if not _in_place(inst, artifact, r, tally):
            kept = partial_bytes(model_path(inst.layout, artifact))
            r.skip_to(done, bytes_total=total, message=f"Resuming {artifact.name} ({human_bytes(kept)} of "
                      f"{human_bytes(artifact.size)} already downloaded)" if kept else f"Downloading {artifact.name}")
            inst.downloader(r, artifact.name, offset=done, total=total).fetch(
                Item(url=artifact.url, dest=model_path(inst.layout, artifact), sha256=artifact.sha256,
                     size=artifact.size, label=artifact.name))
            _remember_verified(inst, artifact)
            tally.fetched, tally.replaced = tally.fetched + 1, tally.replaced + present
        done += artifact.size  # not transferred now when it was in place: kept out of the speed
        r.skip_to(done, bytes_total=total, message=f"{artifact.name}: in place and verified")
    r.finish(*_models_outcome(models, total, tally))


@dataclass
class _Tally:
    """What the models step did, for its last message."""

    rehashed: int = 0  # files hashed now: no record vouched for them, or --verify-all
    replaced: int = 0  # files there that did not match, replaced by a verified download
    fetched: int = 0  # files downloaded (missing ones and replacements)


def _models_outcome(models, total: int, tally: _Tally) -> tuple:
    checked = f"; {tally.rehashed} re-hashed, {tally.replaced} replaced" if tally.rehashed or tally.replaced else ""
    if not tally.fetched:
        return SKIPPED, f"all {len(models)} model(s) already in place and verified{checked}"
    return DONE, f"{len(models)} model(s) in place, SHA-256 verified ({human_bytes(total)}){checked}"


def _in_place(inst, artifact, r, tally: _Tally) -> bool:
    """Already there and verified: by the record of an earlier check (the same fingerprint)
    unless --verify-all trusts no record, or else by hashing it now."""
    path = model_path(inst.layout, artifact)
    if not path.exists() or path.stat().st_size != artifact.size:
        return False
    if not inst.options.verify_all and inst.verified.get(artifact.relative_path) == _fingerprint(path, artifact):
        return True

    def hashing(done: int) -> None:  # also keeps the heartbeat going through a long hash
        r.update(message=f"{artifact.name}: checking the file already there ({100 * done // artifact.size}%)")
    tally.rehashed += 1
    if file_sha256(path, progress=hashing) != artifact.sha256:
        _forget_verified(inst, artifact)  # should its replacement fail, no record may vouch for it
        return False  # replaced by a verified download; the old file stays until then
    _remember_verified(inst, artifact)
    return True


def _fingerprint(path, artifact) -> dict:
    """What must stay the same for a recorded check to vouch for the file. On POSIX this
    includes the inode change time, which every write and every utime() set to "now" and no
    call can set back (so a corruption that restores the mtime still shows), and the inode (a
    file swapped in by a rename). Windows has neither in that sense (its st_ctime is the
    creation time): there size and mtime must do, and --verify-all is the way to be sure."""
    stat = path.stat()
    fingerprint = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": artifact.sha256}
    if os.name != "nt":
        fingerprint.update(ctime_ns=stat.st_ctime_ns, inode=stat.st_ino)
    return fingerprint


def _remember_verified(inst, artifact) -> None:
    inst.verified[artifact.relative_path] = _fingerprint(model_path(inst.layout, artifact), artifact)
    inst.layout.update_state(verified=inst.verified)


def _forget_verified(inst, artifact) -> None:
    if inst.verified.pop(artifact.relative_path, None) is not None:
        inst.layout.update_state(verified=inst.verified)


def step_environment(inst, r) -> None:
    env = inst.environment(r)
    health = env.health(inst.requirements, known=inst.env_health)
    if health.ready:
        return r.finish(SKIPPED, f"PyTorch ({inst.build.key}) and ComfyUI's requirements are installed and import")
    found = env.set_up(inst.requirements, health)
    repaired = f"repaired ({'; '.join(health.repairs())}); " if health.venv else ""
    if inst.build.flavor == "cpu":
        gpu = "CPU only"
    else:
        gpu = "it sees the GPU" if found.get("gpu") else "WARNING: it does not see the GPU (check the driver)"
    r.finish(DONE, f"{repaired}PyTorch {found.get('torch')} installed for {inst.build.key}; {gpu}")


def _plan_environment(inst, env) -> None:
    """What the environment step will do (a repair, where PyTorch comes from), in the plan and its notes."""
    inst.plan["environment"] = env.describe(inst.env_health)
    inst.plan["warnings"].extend(inst.plan["environment"]["notes"])


def _choose_port(inst) -> None:
    """Chosen before anything is written, so the plan, the start script, the service and the
    registered URL agree; a port held by another ComfyUI (or any program) is never shared."""
    remembered = inst.layout.read_state().get("port") or {}
    earlier = remembered.get("chosen") if remembered.get("asked") == inst.options.port else None
    inst.port, notes = identity.choose_port(inst.options.host, inst.options.port, inst.layout, earlier)
    if inst.port != inst.options.port:
        inst.port_note = "; ".join(notes) or f"chosen by an earlier run when port {inst.options.port} was taken"
        inst.plan["warnings"].append(f"ComfyUI will listen on port {inst.port} ({inst.port_note})")
    inst.plan["port"] = inst.port


def step_service(inst, r) -> None:
    inst.layout.update_state(port={"asked": inst.options.port, "chosen": inst.port})
    script = autostart.write_start_script(inst.launch)
    own = (f"GPU {inst.pins[0].index}: " if inst.pins else "") + _own_service(inst, r)
    others = gpusteps.services(inst, _scope(inst) if inst.options.service else None)
    r.finish(DONE, f"wrote {script}; {own}{others}")


def _own_service(inst, r) -> str:
    """The install's own ComfyUI's service (or, with --no-service, none, and none left from an
    earlier run: nothing starts it at boot)."""
    if not inst.options.service:
        removed = autostart.unregister(inst.layout.read_state().get("service") or {}, inst.hooks.run)
        inst.layout.update_state(service={})
        gone = f"; removed the service an earlier run registered ({', '.join(removed)})" if removed else ""
        return f"no service registered (--no-service){gone}"
    r.update(progress=30, message="Registering the service")
    retired = legacy.retire(inst.launch, inst.hooks.home, inst.hooks.run)
    registration = autostart.register(inst.launch, inst.hooks.home, inst.hooks.run, scope=_scope(inst))
    inst.layout.update_state(service=registration.record())
    moved = f"; removed the old shared entry that ran this install ({', '.join(retired)})" if retired else ""
    return f"{registration.message}{moved}"


def _scope(inst):
    """systemd's: a system unit when run as root or with --system-service, else a user unit."""
    if inst.layout.os_name != "linux" or not (inst.options.system_service or inst.hooks.as_root):
        return None
    return autostart.system_scope(inst.hooks.system_units, inst.layout.root, inst.hooks.as_root)


def step_verify(inst, r) -> None:
    if not inst.options.start:
        return r.finish(SKIPPED, f"not started (--no-start); start it with {inst.layout.start_script}")
    service = inst.layout.read_state().get("service") or {}
    inst.stats, note = verify_one(inst, inst.launch, service, r)
    own = (f"GPU {inst.pins[0].index}: " if inst.pins else "") + gpusteps.answered(inst.stats, inst.launch, note)
    r.finish(DONE, "; ".join([own, *gpusteps.verify(inst, r, verify_one)]))


def verify_one(inst, target, service: dict, r) -> tuple:
    """(stats, note) of one ComfyUI of this install, (re)started unless it already runs with these
    settings. Its GPU pin is invisible in /system_stats (an environment variable), so the pin it
    was last started with is remembered per port: a changed pin restarts it too."""
    stats, note = identity.system_stats(target.url), ""
    pins = inst.layout.read_state().get("pins") or {}
    if not identity.is_this_launch(stats, target) or pins.get(str(target.port), {}) != dict(target.env):
        stats, note = _start(inst, target, service, r)
        inst.layout.update_state(pins={**pins, str(target.port): dict(target.env)})
    return stats, note


def _start(inst, target, service: dict, r) -> tuple:
    """(stats, note): ComfyUI's start-up check (once a run: every GPU's ComfyUI is the same tree
    and venv), then the server (by the service if there is one)."""
    _make_room(target, service)
    survived = "" if inst.startup_checked else _startup_check(inst, target, r)
    inst.startup_checked = True
    log_from, watch, process = comfylog.size(target.log_file), None, None
    if service.get("start_command"):
        watch = supervise.watcher(service, target, inst.hooks.run)
        _start_service(inst, service, r)
    else:
        r.update(progress=5, message=f"Starting ComfyUI ({target.log_file})")
        process = launch.start_detached(target)
    timeout = inst.options.start_timeout
    stats = launch.wait_until_up(target, timeout=timeout, control=inst.hooks.control, process=process,
                                 log_from=log_from, watch=watch, sleep=inst.hooks.sleep,
                                 tick=lambda waited: r.update(progress=5 + 90 * waited / timeout,
                                                              message=f"Waiting for ComfyUI at {target.url} to "
                                                                      f"answer ({waited:.0f} s)"))
    return stats, (f"; note: its start-up check printed an error it survived (often a custom node that did not "
                   f"load): {survived}" if survived else "")


def _startup_check(inst, target, r) -> str:
    r.update(progress=2, message=f"Running ComfyUI's start-up check (main.py {launch.QUICK_TEST})")
    return launch.startup_check(target, timeout=inst.options.start_timeout, control=inst.hooks.control,
                                sleep=inst.hooks.sleep,
                                tick=lambda waited: r.update(message=f"ComfyUI's start-up check ({waited:.0f} s)"))


def _make_room(target, service: dict) -> None:
    """Stop the ComfyUI this installer started here before (other settings, or another port);
    never start next to one that is not ours to stop."""
    launch.stop(target)
    stats = identity.system_stats(target.url)
    if identity.runs_this_install(stats, target.layout):
        if service.get("start_command"):
            return  # the service's own ComfyUI: its restart replaces it
        raise Failure(f"this install's ComfyUI already answers on port {target.port} with other settings "
                      f"({' '.join(identity.argv_of(stats)[1:])}), and the installer did not start it",
                      "stop it (Ctrl-C in the window that runs it, or end its process), then run the installer again")
    taken_by = identity.holder(target.host, target.port, target.layout)
    if taken_by:
        raise Failure(f"port {target.port} is used by {taken_by} (it was free when the check ran)",
                      "run the installer again (its check picks the next free port), or pass --port with a free port")


def _start_service(inst, service: dict, r) -> None:
    r.update(progress=5, message=f"Starting the {service['manager']} service {service.get('name', '')}".rstrip())
    done = inst.hooks.run(service["start_command"], timeout=60)
    if done.code != 0:
        raise Failure(f"`{' '.join(service['start_command'])}` failed: {done.output.strip()[-300:]}",
                      "run it yourself to see why, or re-run with --no-service")


def step_register(inst, r) -> None:
    url, others = inst.launch.url, gpusteps.register(inst)
    if inst.stats is None:
        return r.finish(SKIPPED, "ComfyUI was not started, so it was not registered; run again without --no-start"
                                 f"{others}")
    if inst.hooks.register is None:
        return r.finish(SKIPPED, f"no Comfy Hybrid database here: set the 'local' backend's URL to {url} "
                                 f"in the admin (or COMFYUI_URL on the server){others}")
    device = gpusteps.device_of(inst.stats)
    r.finish(DONE, inst.hooks.register({"url": url, "gpu": device.get("name", ""),
                                        "vram_total": device.get("vram_total")}) + others)


def environment_for(inst, r) -> Environment:
    def tick():
        r.update()  # a heartbeat while pip is silent
        if inst.hooks.control() == CANCEL:
            raise Cancelled()  # terminates pip; a pause waits for the command to finish

    return Environment(layout=inst.layout, build=inst.build, base_python=inst.options.python or sys.executable,
                       run=inst.hooks.run, say=lambda progress, message: r.update(progress=progress, message=message),
                       tick=tick, checkpoint=lambda: check_control(inst.hooks.control),
                       extra=inst.manifest.comfyui.extra_requirements)
