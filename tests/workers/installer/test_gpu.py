"""GPU detection parses every recorded real output (tests/data/gpu-samples, copied from
shared/reference/gpu-samples), and the PyTorch build table picks the right build from them."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from workers.installer.detect import GIB, MIB, primary_gpu
from workers.installer.detect.lspci import parse_lspci
from workers.installer.detect.macos import parse_system_profiler
from workers.installer.detect.nvidia import parse_nvidia_smi
from workers.installer.detect.probe import CommandOutput, SystemInfo, probe_system
from workers.installer.detect.rocm import parse_rocm_smi
from workers.installer.detect.windows import parse_windows
from workers.installer.errors import Failure
from workers.installer.torchbuild import choose_build

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "gpu-samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


@dataclass
class Expect:
    parser: object
    names: list = field(default_factory=list)
    vendors: Optional[list] = None  # default: all the vendor of the parser's tool
    vram_mib: Optional[list] = None
    driver: str = ""
    cuda: str = ""
    problem: str = ""
    device_ids: Optional[list] = None
    integrated: Optional[list] = None
    gfx: Optional[list] = None


A40 = "NVIDIA A40"
MI300A = "Instinct MI300A"
EXPECTED = {
    # NVIDIA nvidia-smi
    "nvidia-smi-rtx4080super-driver595-cuda13.2.txt": Expect(
        parse_nvidia_smi, ["NVIDIA GeForce RTX 4080…"], vram_mib=[16376], driver="595.71.05", cuda="13.2"),
    "nvidia-smi-L-rtx4080super-driver595.txt": Expect(parse_nvidia_smi, ["NVIDIA GeForce RTX 4080 SUPER"]),
    "nvidia-smi-rtx2080super-driver610-kmd-umd-header.txt": Expect(
        parse_nvidia_smi, ["NVIDIA GeForce RTX 2080…"], vram_mib=[8192], driver="610.57.04", cuda="13.3"),
    "nvidia-smi-version-driver610.txt": Expect(parse_nvidia_smi, [], driver="610.57.04", cuda="13.3"),
    "nvidia-smi-windows-wddm-rtx2080super-driver591.txt": Expect(
        parse_nvidia_smi, ["NVIDIA GeForce RTX 2080…"], vram_mib=[8192], driver="591.86", cuda="13.1"),
    "nvidia-smi-h100-mig-enabled-driver590.txt": Expect(
        parse_nvidia_smi, ["NVIDIA H100 80GB HBM3"], vram_mib=[81559], driver="590.48.01", cuda="13.1"),
    "nvidia-smi-multi-gpu-10x-a40-driver550-cuda12.4.txt": Expect(
        parse_nvidia_smi, [A40] * 10, vram_mib=[46068] * 10, driver="550.127.05", cuda="12.4"),
    "nvidia-smi-rtx5090-rtx4090-driver580-cuda13.0-excerpt.txt": Expect(
        parse_nvidia_smi, ["NVIDIA GeForce RTX 5090", "NVIDIA GeForce RTX 4090"], vram_mib=[32607, 24564],
        driver="580.82.09", cuda="13.0"),
    "nvidia-smi-laptop-rtx4070-hybrid-driver580-excerpt.txt": Expect(
        parse_nvidia_smi, ["NVIDIA GeForce RTX 4070…"], vram_mib=[8188], driver="580.173.02", cuda="13.0"),
    "nvidia-smi-laptop-rtx2070-driver440-legacy-format.txt": Expect(
        parse_nvidia_smi, ["GeForce RTX 207…"], vram_mib=[7973], driver="440.100", cuda="10.2"),
    "nvidia-smi-L-2x-quadro-rtx4000.txt": Expect(parse_nvidia_smi, ["Quadro RTX 4000"] * 2),
    "nvidia-smi-query-gpu-csv-all-fields-rtx4080super.txt": Expect(
        parse_nvidia_smi, ["NVIDIA GeForce RTX 4080 SUPER"], vram_mib=[16376], driver="595.71.05",
        device_ids=["2702"]),
    "nvidia-smi-query-gpu-csv-nounits-tesla-p100.txt": Expect(
        parse_nvidia_smi, ["Tesla P100-PCIE-16GB"], vram_mib=[103 + 0 + 16280]),
    "nvidia-smi-not-found.txt": Expect(parse_nvidia_smi, problem="not installed"),
    "nvidia-smi-driver-mismatch.txt": Expect(parse_nvidia_smi, problem="old kernel module is still loaded"),
    "nvidia-smi-no-devices.txt": Expect(parse_nvidia_smi, problem="sees no GPU"),
    "nvidia-smi-failed-communicate-with-driver.txt": Expect(parse_nvidia_smi, problem="driver is not loaded"),
    # AMD rocm-smi
    "rocm-smi-2gpus-navi21-0x73bf-0x73a3-rocm6.1.txt": Expect(
        parse_rocm_smi, ["Radeon RX 6800/6800 XT/6900 XT (Navi 21)", "Radeon PRO W6800 (Navi 21)"],
        device_ids=["73bf", "73a3"]),
    "rocm-smi-mi300a-stacked-id-format-pre-rocm6.1.1.txt": Expect(parse_rocm_smi, [MI300A], device_ids=["74a0"]),
    "rocm-smi-showproduct-4x-mi300a-rocm6.1.txt": Expect(
        parse_rocm_smi, ["Aqua Vanjaram [Instinct MI300A]"] * 4, gfx=["gfx942"] * 4),
    "rocm-smi-legacy-format-2x-rx7900xtx-igpu-errors.txt": Expect(
        parse_rocm_smi, ["AMD GPU 0", "AMD GPU 1", "AMD GPU 2"]),
    "rocm-smi-csv-productname-use-vram-rx7900xt.txt": Expect(
        parse_rocm_smi, ["Radeon RX 7900 XT"], vram_mib=[21458059264 // MIB], gfx=["gfx1100"]),
    "rocm-smi-json-productname-use-vram-rx7900xt.txt": Expect(
        parse_rocm_smi, ["Radeon RX 7900 XT"], vram_mib=[21458059264 // MIB], device_ids=["744c"]),
    "rocm-smi-csv-productname-vram-uniqueid-rx6800-raphael-igpu.txt": Expect(
        parse_rocm_smi, ["Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]", "Raphael"], vram_mib=[16368, 64],
        integrated=[False, True], gfx=["gfx1030", "gfx1036"]),
    # lspci
    "lspci-nn-grep-vga-3d-nvidia-intel-igpu.txt": Expect(
        parse_lspci, ["Intel GPU 3e9b", "GeForce MX130", "GeForce GTX 970"], vendors=["intel", "nvidia", "nvidia"],
        device_ids=["3e9b", "174d", "13c2"], integrated=[True, False, False]),
    "lspci-nn-amd-rx7900xtx.txt": Expect(parse_lspci, ["Radeon RX 7900 XT/7900 XTX"], vendors=["amd"],
                                         device_ids=["744c"]),
    "lspci-D-grep-mi300a-processing-accelerators.txt": Expect(parse_lspci, [MI300A] * 4, vendors=["amd"] * 4),
    # macOS
    "system-profiler-m2-max.txt": Expect(parse_system_profiler, ["Apple M2 Max"], vendors=["apple"]),
    "system-profiler-m5-max-3-displays.txt": Expect(parse_system_profiler, ["Apple M5 Max"], vendors=["apple"]),
    "system-profiler-imac-pro-radeon-pro-vega64.txt": Expect(
        parse_system_profiler, ["Radeon Pro Vega 64"], vendors=["amd"], vram_mib=[16 * 1024], device_ids=["6860"]),
    # Windows
    "win32-videocontroller-wmic-nvidia-intel.txt": Expect(
        parse_windows, ["NVIDIA GeForce RTX 4090", "Intel(R) UHD Graphics 770"], vendors=["nvidia", "intel"],
        vram_mib=[4293918720 // MIB, 1024], integrated=[False, True]),
    "win32-videocontroller-gwmi-ft-intel-nvidia-laptop-excerpt.txt": Expect(
        parse_windows, ["Intel(R) UHD Graphics 630", "NVIDIA GeForce GTX 1050 Ti"], vendors=["intel", "nvidia"],
        device_ids=["3e9b", "1c8c"]),
    "win32-videocontroller-format-list-radeon-rx580-excerpt.txt": Expect(
        parse_windows, ["Radeon RX 580 Series"], vendors=["amd"], device_ids=["67df"]),
    "win-get-pnpdevice-display-rtx5090-laptop.txt": Expect(
        parse_windows, ["NVIDIA GeForce RTX 5090 Laptop GPU"], vendors=["nvidia"], device_ids=["2c58"]),
}

DEFAULT_VENDOR = {parse_nvidia_smi: "nvidia", parse_rocm_smi: "amd"}


def test_every_recorded_sample_has_an_expectation():
    assert sorted(p.name for p in SAMPLES.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_it_parses_the_recorded_sample(name):
    expect = EXPECTED[name]
    probe = expect.parser(sample(name))
    gpus = probe.gpus
    assert [g.name for g in gpus] == expect.names
    vendors = expect.vendors or [DEFAULT_VENDOR[expect.parser]] * len(expect.names)
    assert [g.vendor for g in gpus] == vendors
    assert (probe.driver_version, probe.cuda_version) == (expect.driver, expect.cuda)
    assert expect.problem in probe.problem and bool(probe.problem) == bool(expect.problem)
    if expect.problem:
        assert probe.fix  # every driver problem says what to do
    if expect.vram_mib is not None:
        assert [g.vram_bytes // MIB for g in gpus] == expect.vram_mib
    for attribute, expected in (("device_id", expect.device_ids), ("integrated", expect.integrated),
                                ("gfx", expect.gfx)):
        if expected is not None:
            assert [getattr(g, attribute) for g in gpus] == expected


def test_windows_adapter_ram_at_its_32_bit_cap_is_reported_as_a_lower_bound():
    rtx4090, intel = parse_windows(sample("win32-videocontroller-wmic-nvidia-intel.txt")).gpus
    assert rtx4090.vram_exact is False and intel.vram_exact is True


def test_the_primary_gpu_is_the_discrete_one_not_the_integrated_one():
    gpus = parse_lspci(sample("lspci-nn-grep-vga-3d-nvidia-intel-igpu.txt")).gpus
    assert primary_gpu(gpus).vendor == "nvidia"
    both = parse_rocm_smi(sample("rocm-smi-csv-productname-vram-uniqueid-rx6800-raphael-igpu.txt")).gpus
    assert "RX 6800" in primary_gpu(both).name


def test_the_primary_gpu_is_the_one_with_most_memory():
    gpus = parse_nvidia_smi(sample("nvidia-smi-rtx5090-rtx4090-driver580-cuda13.0-excerpt.txt")).gpus
    assert primary_gpu(gpus).name == "NVIDIA GeForce RTX 5090"


# --- the PyTorch build table, fed with real samples ---------------------------------------
def nvidia_system(table_sample: str, os_name: str = "linux") -> SystemInfo:
    probe = parse_nvidia_smi(sample(table_sample))
    return SystemInfo(os=os_name, arch="x86_64", gpus=probe.gpus, driver_version=probe.driver_version,
                      cuda_version=probe.cuda_version)


@pytest.mark.parametrize("table_sample, build", [
    ("nvidia-smi-multi-gpu-10x-a40-driver550-cuda12.4.txt", "cu124"),
    ("nvidia-smi-rtx5090-rtx4090-driver580-cuda13.0-excerpt.txt", "cu130"),
    ("nvidia-smi-h100-mig-enabled-driver590.txt", "cu130"),
    ("nvidia-smi-rtx4080super-driver595-cuda13.2.txt", "cu132"),
    ("nvidia-smi-rtx2080super-driver610-kmd-umd-header.txt", "cu132"),
    ("nvidia-smi-windows-wddm-rtx2080super-driver591.txt", "cu130"),
])
def test_it_picks_the_newest_cuda_build_the_driver_supports(table_sample, build):
    chosen = choose_build(nvidia_system(table_sample))
    assert chosen.key == build
    assert chosen.index_url == f"https://download.pytorch.org/whl/{build}"


def test_a_driver_too_old_for_any_build_fails_with_update_the_driver():
    with pytest.raises(Failure) as failure:
        choose_build(nvidia_system("nvidia-smi-laptop-rtx2070-driver440-legacy-format.txt"))
    assert "CUDA 10.2" in failure.value.cause and "update the NVIDIA driver" in failure.value.fix


def test_a_pascal_gpu_is_capped_at_cu126_even_with_a_newer_driver():
    p100 = parse_nvidia_smi(sample("nvidia-smi-query-gpu-csv-nounits-tesla-p100.txt")).gpus
    system = SystemInfo(os="linux", arch="x86_64", gpus=p100, driver_version="580.82.09", cuda_version="13.0")
    assert choose_build(system).key == "cu126"


def test_a_compute_capability_from_nvidia_smi_decides_before_the_name():
    gpus = parse_nvidia_smi(sample("nvidia-smi-query-gpu-csv-all-fields-rtx4080super.txt")).gpus
    gpus[0].compute_capability = "6.1"
    system = SystemInfo(os="linux", arch="x86_64", gpus=gpus, driver_version="595.71.05", cuda_version="13.2")
    assert choose_build(system).key == "cu126"


def test_a_blackwell_gpu_on_an_old_driver_fails_instead_of_installing_a_build_without_its_kernels():
    laptop = parse_windows(sample("win-get-pnpdevice-display-rtx5090-laptop.txt")).gpus
    system = SystemInfo(os="windows", arch="amd64", gpus=laptop, driver_version="551.23", cuda_version="12.4")
    with pytest.raises(Failure) as failure:
        choose_build(system)
    assert "cu128" in failure.value.cause and "R570" in failure.value.fix


@pytest.mark.parametrize("table_sample", ["nvidia-smi-driver-mismatch.txt",
                                          "nvidia-smi-failed-communicate-with-driver.txt"])
def test_a_broken_nvidia_driver_stops_the_install_with_its_own_fix(table_sample):
    problem = parse_nvidia_smi(sample(table_sample))
    lspci = parse_lspci(sample("lspci-nn-grep-vga-3d-nvidia-intel-igpu.txt")).gpus
    system = SystemInfo(os="linux", arch="x86_64", gpus=lspci, problem=problem.problem, fix=problem.fix)
    with pytest.raises(Failure) as failure:
        choose_build(system)
    assert failure.value.fix.startswith(problem.fix) and "--torch cpu" in failure.value.fix


def test_an_amd_gpu_supported_by_rocm_gets_the_rocm_build():
    gpus = parse_rocm_smi(sample("rocm-smi-json-productname-use-vram-rx7900xt.txt")).gpus
    assert choose_build(SystemInfo(os="linux", arch="x86_64", gpus=gpus)).key == "rocm7.2"


def test_an_amd_gpu_found_only_by_lspci_gets_rocm_when_its_name_is_known():
    gpus = parse_lspci(sample("lspci-nn-amd-rx7900xtx.txt")).gpus
    assert choose_build(SystemInfo(os="linux", arch="x86_64", gpus=gpus)).flavor == "rocm"


def test_an_old_radeon_on_windows_falls_back_to_the_cpu_build():
    gpus = parse_windows(sample("win32-videocontroller-format-list-radeon-rx580-excerpt.txt")).gpus
    assert choose_build(SystemInfo(os="windows", arch="amd64", gpus=gpus)).key == "cpu"


def test_apple_silicon_gets_mps_from_pypi_and_an_intel_mac_gets_cpu():
    m2 = parse_system_profiler(sample("system-profiler-m2-max.txt")).gpus
    mps = choose_build(SystemInfo(os="darwin", arch="arm64", gpus=m2))
    assert (mps.key, mps.index_url) == ("mps", "")
    vega = parse_system_profiler(sample("system-profiler-imac-pro-radeon-pro-vega64.txt")).gpus
    assert choose_build(SystemInfo(os="darwin", arch="x86_64", gpus=vega)).key == "cpu"


def test_only_an_integrated_gpu_gets_the_cpu_build():
    intel = [g for g in parse_lspci(sample("lspci-nn-grep-vga-3d-nvidia-intel-igpu.txt")).gpus if g.vendor == "intel"]
    assert choose_build(SystemInfo(os="linux", arch="x86_64", gpus=intel)).key == "cpu"


def test_torch_override_wins_over_detection():
    system = nvidia_system("nvidia-smi-driver-mismatch.txt")
    assert choose_build(system, override="cpu").key == "cpu"
    with pytest.raises(Failure):
        choose_build(system, override="cu999")


# --- the live probe, with recorded outputs standing in for the commands --------------------
def recorded(outputs: dict):
    def run(args):
        key = " ".join(args[:2])
        if key not in outputs:
            return CommandOutput(False, 127, "")
        return CommandOutput(True, 0, sample(outputs[key]))
    return run


def test_the_linux_probe_merges_nvidia_smi_with_lspci_and_keeps_the_intel_igpu():
    run = recorded({"nvidia-smi --query-gpu=name,memory.total,driver_version,pci.device_id,compute_cap":
                    "nvidia-smi-query-gpu-csv-all-fields-rtx4080super.txt",
                    "nvidia-smi": "nvidia-smi-rtx4080super-driver595-cuda13.2.txt",
                    "lspci -nn": "lspci-nn-grep-vga-3d-nvidia-intel-igpu.txt"})
    info = probe_system("linux", "x86_64", run=run)
    assert [g.name for g in info.gpus] == ["NVIDIA GeForce RTX 4080 SUPER", "Intel GPU 3e9b"]
    assert (info.driver_version, info.cuda_version) == ("595.71.05", "13.2")
    assert info.primary.vram_bytes == 16376 * MIB and choose_build(info).key == "cu132"


def test_an_nvidia_card_without_nvidia_smi_is_reported_as_a_missing_driver():
    info = probe_system("linux", "x86_64", run=recorded({"lspci -nn": "lspci-nn-grep-vga-3d-nvidia-intel-igpu.txt"}))
    assert "driver is not" in info.problem and "Install the NVIDIA driver" in info.fix


def test_the_macos_probe_counts_unified_memory_as_the_gpus_memory():
    run = recorded({"system_profiler SPDisplaysDataType": "system-profiler-m5-max-3-displays.txt"})

    def with_memsize(args):
        return CommandOutput(True, 0, str(64 * GIB)) if args[0] == "sysctl" else run(args)
    info = probe_system("darwin", "arm64", run=with_memsize)
    assert info.primary.name == "Apple M5 Max" and info.primary.vram_bytes == 64 * GIB
