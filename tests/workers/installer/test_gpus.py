"""One ComfyUI per GPU (`--gpus`): which GPUs the recorded samples give, how each is pinned, the
services each gets (its ComfyUI, and a worker for each GPU after the first), what a re-run with
fewer GPUs or --no-service takes away, and the backends registered through the adapter."""
import argparse
import configparser
import plistlib
from dataclasses import replace
from pathlib import Path, PureWindowsPath

import pytest

from tests.workers.installer.support import (
    STANDIN_MAIN,
    ArtifactServer,
    FakeRunner,
    free_port,
    hooks_for,
    make_site,
    options_for,
    tar_gz,
    write_manifest,
)
from workers.installer import autostart, gpus, gpusteps, launch
from workers.installer.autostart import Launch
from workers.installer.cli import add_install_arguments, options_from_args
from workers.installer.console import describe_plan
from workers.installer.detect import Gpu
from workers.installer.detect.probe import CommandOutput, SystemInfo, probe_system
from workers.installer.errors import Failure, InstallError
from workers.installer.layout import Layout
from workers.installer.pipeline import Installer
from workers.installer.torchbuild import build_for

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "gpu-samples"
QUERY = "nvidia-smi --query-gpu=name,memory.total,driver_version,pci.device_id,compute_cap"
# `--query-gpu` as the probe asks it, for the two cards of the recorded 5090 + 4090 table (same
# order, names and memory; the CSV layout of the recorded --query-gpu sample).
TWO_CARDS_CSV = ("name, memory.total [MiB], driver_version, pci.device_id, compute_cap\n"
                 "NVIDIA GeForce RTX 5090, 32607 MiB, 580.82.09, 0x2B8510DE, 12.0\n"
                 "NVIDIA GeForce RTX 4090, 24564 MiB, 580.82.09, 0x268410DE, 8.9\n")
CUDA = build_for("cu128", "test")
ROCM = build_for("rocm7.2", "test")


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def recorded(outputs: dict):
    def run(args):
        text = outputs.get(" ".join(args[:2]))
        return CommandOutput(True, 0, text) if text is not None else CommandOutput(False, 127, "")
    return run


def ten_a40s() -> SystemInfo:
    """The 10x A40 box, as the probe sees it from its recorded table (no --query-gpu answer)."""
    table = sample("nvidia-smi-multi-gpu-10x-a40-driver550-cuda12.4.txt")
    return probe_system("linux", "x86_64", run=recorded({QUERY: "", "nvidia-smi": table}))


def two_cards() -> SystemInfo:
    table = sample("nvidia-smi-rtx5090-rtx4090-driver580-cuda13.0-excerpt.txt")
    return probe_system("linux", "x86_64", run=recorded({QUERY: TWO_CARDS_CSV, "nvidia-smi": table}))


def three_a40s() -> SystemInfo:
    info = ten_a40s()
    info.gpus = info.gpus[:3]
    return info


# Which GPUs, and how each is pinned -----------------------------------------------------------
def test_the_ten_a40_sample_gives_ten_comfyuis_each_pinned_in_pci_bus_order():
    pins, note = gpus.choose(ten_a40s(), CUDA, "all")
    assert [pin.index for pin in pins] == list(range(10)) and note == ""
    assert pins[3].env == (("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), ("CUDA_VISIBLE_DEVICES", "3"))
    assert [pin.backend(first=n == 0) for n, pin in enumerate(pins[:3])] == ["local", "local-gpu1", "local-gpu2"]


def test_a_two_card_query_lists_each_gpu_in_nvidia_smi_order():
    pins, _ = gpus.choose(two_cards(), CUDA, "all")
    assert [(pin.index, pin.name) for pin in pins] == [(0, "NVIDIA GeForce RTX 5090"), (1, "NVIDIA GeForce RTX 4090")]


def test_gpus_takes_the_numbers_asked_in_order_and_refuses_one_that_is_not_there():
    pins, _ = gpus.choose(ten_a40s(), CUDA, "7, 2,2")
    assert [pin.index for pin in pins] == [2, 7]
    with pytest.raises(Failure) as error:
        gpus.choose(two_cards(), CUDA, "0,2")
    assert "no GPU 2 here" in error.value.cause and "0 (NVIDIA GeForce RTX 5090), 1 (NVIDIA GeForce RTX 4090)" \
        in error.value.cause


def test_gpus_refuses_text_that_is_neither_all_nor_numbers():
    with pytest.raises(Failure) as error:
        gpus.choose(two_cards(), CUDA, "first")
    assert "--gpus all or --gpus 0,2" in error.value.fix


def test_without_gpus_one_comfyui_serves_the_whole_machine_unpinned():
    assert gpus.choose(ten_a40s(), CUDA, "") == ([], "")


def test_two_radeons_are_pinned_by_rocr_visible_devices_alone():
    info = probe_system("linux", "x86_64", run=recorded({"rocm-smi --showproductname": sample(
        "rocm-smi-2gpus-navi21-0x73bf-0x73a3-rocm6.1.txt")}))
    pins, _ = gpus.choose(info, ROCM, "all")
    # Not HIP_VISIBLE_DEVICES as well: HIP numbers what ROCr left visible, so "1" would hide it.
    assert [pin.env for pin in pins] == [(("ROCR_VISIBLE_DEVICES", "0"),), (("ROCR_VISIBLE_DEVICES", "1"),)]


def test_an_apus_integrated_gpu_keeps_its_number_but_is_never_chosen():
    info = probe_system("linux", "x86_64", run=recorded({"rocm-smi --showproductname": sample(
        "rocm-smi-csv-productname-vram-uniqueid-rx6800-raphael-igpu.txt")}))
    assert [pin.index for pin in gpus.choose(info, ROCM, "all")[0]] == [0]
    with pytest.raises(Failure):
        gpus.choose(info, ROCM, "1")


def test_intel_arc_cards_are_pinned_by_ze_affinity_mask_counting_the_igpu():
    info = SystemInfo(os="linux", arch="x86_64", gpus=[
        Gpu("intel", "Intel UHD Graphics 770", integrated=True), Gpu("intel", "Intel Arc A770"),
        Gpu("intel", "Intel Arc A770")])
    pins, _ = gpus.choose(info, build_for("xpu", "test"), "all")
    assert [pin.env for pin in pins] == [(("ZE_AFFINITY_MASK", "1"),), (("ZE_AFFINITY_MASK", "2"),)]


def test_on_a_mac_all_is_one_comfyui_and_a_gpu_number_fails():
    mac = SystemInfo(os="darwin", arch="arm64", gpus=[Gpu("apple", "Apple M2 Max", integrated=True)])
    pins, note = gpus.choose(mac, build_for("mps", "test", "darwin"), "all")
    assert pins == [] and "Apple silicon has one GPU" in note
    with pytest.raises(Failure):
        gpus.choose(mac, build_for("mps", "test", "darwin"), "1")


# What each GPU's services look like -----------------------------------------------------------
def gpu1_launch(os_name="linux", root="/home/ann/comfyui") -> Launch:
    pin = gpus.choose(two_cards(), CUDA, "all")[0][1]
    path = PureWindowsPath(root) if os_name == "windows" else Path(root)
    return Launch(Layout(path, os_name), "127.0.0.1", 8189, cpu_only=False, instance=pin.instance, env=pin.env,
                  shortcuts=False)


def gpu1_worker(launch: Launch) -> gpus.Worker:
    return gpus.Worker(launch.layout, "gpu1", launch.url, "local-gpu1", Path("/srv/hybrid/.venv/bin/python"),
                       project=Path("/srv/hybrid"))


def unit_of(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_each_gpus_systemd_unit_pins_it_and_runs_comfyui_on_its_own_port():
    launch = gpu1_launch()
    unit = autostart.render_systemd_unit(launch)
    assert launch.names.unit.startswith("comfy-hybrid-comfyui-comfyui-") and launch.names.unit.endswith("-gpu1.service")
    assert 'Environment="CUDA_VISIBLE_DEVICES=1"\n' in unit and 'Environment="CUDA_DEVICE_ORDER=PCI_BUS_ID"\n' in unit
    assert '"--port" "8189"' in unit_of(unit)["Service"]["ExecStart"]
    assert launch.log_file == Path("/home/ann/comfyui/logs/comfyui-gpu1.log")
    assert launch.start_script == Path("/home/ann/comfyui/start-comfyui-gpu1.sh")


def test_the_worker_unit_runs_gpu_worker_for_its_backend_from_the_project_root():
    worker = gpu1_worker(gpu1_launch())
    service = unit_of(autostart.render_systemd_unit(worker))["Service"]
    assert service["WorkingDirectory"] == "/srv/hybrid"
    assert service["ExecStart"] == ('"/srv/hybrid/.venv/bin/python" "/srv/hybrid/manage.py" "gpu_worker" '
                                    '"--comfyui-url" "http://127.0.0.1:8189" "--name" "local-gpu1"')
    assert worker.names.unit.endswith("-gpu1-worker.service") and worker.names.unit != gpu1_launch().names.unit


def test_launchd_nssm_and_the_start_scripts_carry_the_pin_too():
    mac = gpu1_launch("darwin")
    plist = plistlib.loads(autostart.render_launchd_plist(mac))
    assert plist["EnvironmentVariables"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert plist["StandardOutPath"].endswith("comfyui-gpu1.log") and plist["Label"].endswith("-gpu1")
    windows = gpu1_launch("windows", r"C:\Users\ann\comfyui")
    name = windows.names.windows
    assert ["nssm", "set", name, "AppEnvironmentExtra", "CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=1"] \
        in autostart.nssm_commands(windows)
    assert "$env:CUDA_VISIBLE_DEVICES = '1'\n" in autostart.render_start_ps1(windows)
    assert "export CUDA_VISIBLE_DEVICES=1\n" in autostart.render_start_sh(gpu1_launch())


def test_on_windows_the_worker_runs_under_nssm_or_a_logon_task_with_its_own_script():
    worker = gpu1_worker(gpu1_launch("windows", r"C:\Users\ann\comfyui"))
    install, *settings = autostart.nssm_commands(worker)
    assert install[2].endswith("-gpu1-worker") and install[5:] == ["gpu_worker", "--comfyui-url",
                                                                    "http://127.0.0.1:8189", "--name", "local-gpu1"]
    assert ["nssm", "set", worker.names.windows, "AppStdout", r"C:\Users\ann\comfyui\logs\gpu-worker-gpu1.log"] \
        in settings
    assert autostart.schtasks_command(worker)[-1].endswith(r'\comfyui\start-gpu-worker-gpu1.ps1"')


def test_the_management_command_takes_gpus_like_the_installer():
    from workers.management.commands.install_comfyui import Command

    args = Command().create_parser("manage.py", "install_comfyui").parse_args(["--gpus", "0,2", "--yes"])
    assert options_from_args(args).gpus == "0,2"


# The installer with --gpus ------------------------------------------------------------------
@pytest.fixture
def site(tmp_path):
    with ArtifactServer() as server:
        yield make_site(server, tmp_path)


def cuda_runner() -> FakeRunner:
    return FakeRunner(torch_found={"torch": "2.7.0+cu128", "cuda": "12.8", "hip": None, "gpu": True})


def installer(site, tmp_path, runner, probe=three_a40s, **options) -> Installer:
    hooks = hooks_for(tmp_path, runner, probe=probe, register_gpus=lambda backends, retired: "registered")
    return Installer(options_for(site, tmp_path, **{"service": True, "start": False, **options}), hooks)


def units(tmp_path) -> list:
    return sorted(path.name for path in (tmp_path / "home/.config/systemd/user").glob("*.service"))


def test_gpus_all_gives_every_gpu_a_port_and_every_gpu_after_the_first_a_comfyui_and_a_worker(site, tmp_path):
    runner = cuda_runner()
    run = installer(site, tmp_path, runner, gpus="all")
    run.run()
    state = run.layout.read_state()
    ports = [run.port] + [item["port"] for item in state["gpus"]["instances"]]
    assert len(set(ports)) == 3 and [item["backend"] for item in state["gpus"]["instances"]] == ["local-gpu1",
                                                                                                 "local-gpu2"]
    names = [run.launch.names.unit] + [f"{run.launch.names.unit.removesuffix('.service')}-gpu{n}{kind}.service"
                                       for n in (1, 2) for kind in ("", "-worker")]
    assert units(tmp_path) == sorted(names)
    own = (tmp_path / "home/.config/systemd/user" / run.launch.names.unit).read_text()
    assert 'Environment="CUDA_VISIBLE_DEVICES=0"' in own  # the first GPU's ComfyUI is pinned as well
    assert "GPU 2: ComfyUI on port" in run.state("service").message and "backend local-gpu2" in \
        run.state("service").message
    assert [item["backend"] for item in run.plan["gpus"]] == ["local", "local-gpu1", "local-gpu2"]


def test_a_rerun_keeps_each_gpus_port(site, tmp_path):
    first = installer(site, tmp_path, cuda_runner(), gpus="all")
    first.run()
    again = installer(site, tmp_path, cuda_runner(), gpus="all", port=first.options.port)
    again.run()
    assert again.gpu_ports == first.gpu_ports


def test_each_gpus_worker_is_started_once_then_only_started_if_it_is_not_running(site, tmp_path):
    runner = cuda_runner()
    run = installer(site, tmp_path, runner, gpus="0,1")
    run.run()
    pin, target = run.gpu_launches[0]
    name = gpus.previous(run.layout.read_state())[0]["worker"]["name"]
    for _ in range(2):  # a restart each time would make a busy worker leave the fleet and move its jobs
        record = gpus.previous(run.layout.read_state())[0]
        assert gpusteps._start_worker(run, pin, target, record) == f"; its worker {name} runs"
    assert runner.commands[-2:] == [["systemctl", "--user", "restart", name], ["systemctl", "--user", "start", name]]
    installer(site, tmp_path, runner, gpus="0,1", port=run.options.port).run()
    assert gpus.previous(run.layout.read_state())[0]["worker_started_for"] == target.url  # a re-run keeps it


def test_a_rerun_with_fewer_gpus_takes_away_what_served_the_others(site, tmp_path):
    runner = cuda_runner()
    first = installer(site, tmp_path, runner, gpus="all")
    first.run()
    gpu2 = [item for item in first.layout.read_state()["gpus"]["instances"] if item["gpu"] == 2][0]
    again = installer(site, tmp_path, runner, gpus="0,1", port=first.options.port)
    again.run()
    assert ["systemctl", "--user", "disable", "--now", gpu2["service"]["name"]] in runner.commands
    assert ["systemctl", "--user", "disable", "--now", gpu2["worker"]["name"]] in runner.commands
    assert not any("gpu2" in name for name in units(tmp_path)) and any("gpu1" in name for name in units(tmp_path))
    assert not (first.layout.root / "start-comfyui-gpu2.sh").exists()
    assert not (first.layout.root / "start-gpu-worker-gpu2.sh").exists()
    assert [item["gpu"] for item in again.layout.read_state()["gpus"]["instances"]] == [1]


def test_a_rerun_with_no_service_takes_away_every_gpus_services(site, tmp_path):
    runner = cuda_runner()
    installer(site, tmp_path, runner, gpus="all").run()
    installer(site, tmp_path, runner, gpus="all", service=False).run()
    assert units(tmp_path) == []


def test_a_rerun_without_gpus_is_one_comfyui_for_the_machine_again(site, tmp_path):
    runner = cuda_runner()
    installer(site, tmp_path, runner, gpus="all").run()
    plain = installer(site, tmp_path, runner)
    plain.run()
    assert units(tmp_path) == [plain.launch.names.unit]
    assert "CUDA_VISIBLE_DEVICES" not in (tmp_path / "home/.config/systemd/user" / units(tmp_path)[0]).read_text()


def test_a_wrong_gpu_number_fails_the_check_before_anything_is_downloaded(site, tmp_path):
    run = installer(site, tmp_path, cuda_runner(), gpus="5")
    with pytest.raises(InstallError) as error:
        run.run()
    assert error.value.step == "check" and not (run.layout.root / "ComfyUI").exists()


def test_the_plan_lists_each_gpus_port_backend_and_pin(site, tmp_path):
    parser = argparse.ArgumentParser()
    add_install_arguments(parser)
    options = options_from_args(parser.parse_args(["--path", str(tmp_path / "x"), "--manifest", str(site.manifest),
                                                   "--gpus", "0,2"]))
    plan = Installer(options, hooks_for(tmp_path, cuda_runner(), probe=three_a40s)).check()
    assert [(item["index"], item["backend"]) for item in plan["gpus"]] == [(0, "local"), (2, "local-gpu2")]
    assert plan["gpus"][1]["env"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2"}
    assert f"  - GPU 2 (NVIDIA A40): port {plan['gpus'][1]['port']}, backend local-gpu2, CUDA_DEVICE_ORDER=" \
           "PCI_BUS_ID CUDA_VISIBLE_DEVICES=2" in describe_plan(plan).splitlines()


# Verify: each GPU's ComfyUI really starts, pinned --------------------------------------------
PINNED_MAIN = STANDIN_MAIN.replace("import argparse, json, sys", "import argparse, json, os, sys").replace(
    '[{"name": "cpu", "type": "cpu", "vram_total": 0}]',
    '[{"name": "cuda:0 GPU " + os.environ.get("CUDA_VISIBLE_DEVICES", "all"), "type": "cuda", "vram_total": 1}]')


@pytest.fixture
def pinned_site(tmp_path):
    release = tar_gz({"ComfyUI-0.0-standin/main.py": PINNED_MAIN.encode(),
                      "ComfyUI-0.0-standin/requirements.txt": b"aiohttp\n"})
    with ArtifactServer() as server:
        url = server.add("/ComfyUI-0.0-standin.tar.gz", release)
        yield type("Site", (), {"manifest": write_manifest(tmp_path / "manifest.json", url, release, [])})()


@pytest.mark.slow
def test_verify_starts_each_gpus_comfyui_pinned_and_registers_its_backend(pinned_site, tmp_path):
    registered = []
    hooks = hooks_for(tmp_path, cuda_runner(), probe=three_a40s, register=lambda info: "local registered",
                      register_gpus=lambda backends, retired: registered.append(backends) or "gpus registered")
    run = Installer(options_for(pinned_site, tmp_path, gpus="0,2", service=False,
                                port=free_port()), hooks)
    try:
        run.run()
        message = run.state("verify").message
        assert "GPU 0: ComfyUI 0.0-standin" in message and "(device: cuda:0 GPU 0)" in message
        assert "GPU 2: ComfyUI 0.0-standin" in message and "(device: cuda:0 GPU 2)" in message
        assert registered == [[{"name": "local-gpu2", "url": f"http://127.0.0.1:{run.gpu_ports[2]}",
                                "gpu": "cuda:0 GPU 2", "vram_total": 1}]]
        assert "local registered; gpus registered" in run.state("register").message
        assert (run.layout.root / "logs/comfyui-gpu2.log").exists()
    finally:
        assert gpusteps.stop_all(run.layout) == 2


@pytest.mark.slow
def test_a_new_pin_restarts_a_comfyui_already_running_and_a_dropped_gpus_backend_is_retired(pinned_site, tmp_path):
    calls = []
    hooks = hooks_for(tmp_path, cuda_runner(), probe=three_a40s, register=lambda info: "local registered",
                      register_gpus=lambda backends, retired: calls.append((backends, retired)) or "done")
    options = options_for(pinned_site, tmp_path, service=False, port=free_port())
    runs = [Installer(replace(options, gpus=gpus_asked), hooks) for gpus_asked in ("", "0,2", "0")]
    try:
        runs[0].run()
        assert "(device: cuda:0 GPU all)" in runs[0].state("verify").message  # the whole machine, unpinned
        runs[1].run()  # same arguments on the same port, but now pinned: restarted
        assert "GPU 0: ComfyUI" in runs[1].state("verify").message and "(device: cuda:0 GPU 0)" in \
            runs[1].state("verify").message
        gpu2 = runs[1].gpu_launches[0][1]
        runs[2].run()
        assert calls[-1] == ([], ["local-gpu2"]) and launch.system_stats(gpu2.url) is None  # stopped
    finally:
        gpusteps.stop_all(runs[0].layout)


# Backends, through the adapter -----------------------------------------------------------------
def test_the_adapter_registers_each_extra_gpus_backend_and_retires_a_dropped_one(db):
    from routing.models import Backend
    from workers.installer.server import adapter

    message = adapter.register_gpu_backends([{"name": "local-gpu1", "url": "http://127.0.0.1:8189",
                                              "gpu": "NVIDIA A40", "vram_total": 48 * 2**30}], [])
    backend = Backend.objects.get(name="local-gpu1")
    assert (backend.kind, backend.category, backend.url, backend.queue) == (
        Backend.Kind.COMFYUI, "local", "http://127.0.0.1:8189", "local.local-gpu1")
    assert backend.enabled and backend.gpu_name == "NVIDIA A40" and "local-gpu1" in message
    assert "local-gpu1 removed" in adapter.register_gpu_backends([], ["local-gpu1"])
    assert not Backend.objects.filter(name="local-gpu1").exists()
