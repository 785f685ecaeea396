"""The models step: when a model in place is trusted, when it is hashed again, and what a
refusal by Hugging Face tells the user. Real installs (start=False) against the loopback server."""
import argparse
import json
import os

import pytest

from tests.conftest import wait_for
from tests.workers.installer.support import (
    ArtifactServer,
    FakeRunner,
    Fault,
    hooks_for,
    loopback_names,
    make_site,
    options_for,
    standin_release,
    write_manifest,
)
from workers.installer.cli import add_install_arguments, options_from_args
from workers.installer.errors import InstallError
from workers.installer.pipeline import Installer
from workers.installer.steps import _fingerprint

MODEL = "models/checkpoints/tiny.safetensors"
POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="the inode change time is a POSIX notion")


@pytest.fixture
def artifact_server():
    with ArtifactServer() as server:
        yield server


def install(site, tmp_path, reports=None, **options) -> Installer:
    report = (lambda state, states: reports.append(state.as_dict())) if reports is not None else None
    hooks = hooks_for(tmp_path, FakeRunner(), **({"report": report} if report else {}))
    installer = Installer(options_for(site, tmp_path, start=False, **options), hooks)
    installer.run()
    return installer


def checkpoint(installer):
    return installer.layout.comfy_dir / MODEL


def models_step(installer):
    state = installer.state("models")
    return state.status, state.message


def model_requests(server) -> int:
    return sum(path == "/models/tiny.safetensors" for path, _ in server.requests)


def until_a_change_now_gets_a_later_ctime(installer) -> None:
    """Coarse file-system clocks tick every few ms: let a change made now be told apart from the record."""
    recorded, probe = installer.layout.read_state()["verified"][MODEL]["ctime_ns"], installer.layout.root / "probe"

    def later() -> bool:
        probe.write_bytes(b"")
        return probe.stat().st_ctime_ns > recorded
    wait_for(later, 10, 0.001, "the change clock to tick")


def corrupt_keeping_mtime(path) -> None:
    """Flip the middle byte, then put the access and modification times back."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(before.st_size // 2)
        byte = handle.read(1)[0]
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def corrupted_install(server, tmp_path) -> tuple:
    """(site, installer) of an install whose model then lost a byte and got its mtime back."""
    site = make_site(server, tmp_path)
    installer = install(site, tmp_path)
    until_a_change_now_gets_a_later_ctime(installer)
    corrupt_keeping_mtime(checkpoint(installer))
    return site, installer


def site_model(installer):
    return installer.models[0]


@POSIX_ONLY
def test_size_and_mtime_alone_would_have_trusted_a_corruption_that_put_the_mtime_back(artifact_server, tmp_path):
    _, installer = corrupted_install(artifact_server, tmp_path)
    record = installer.layout.read_state()["verified"][MODEL]
    now = _fingerprint(checkpoint(installer), site_model(installer))
    old_keys = ("size", "mtime_ns")  # the fingerprint before ctime and inode were part of it
    assert [record[k] for k in old_keys] == [now[k] for k in old_keys] and record["ctime_ns"] != now["ctime_ns"]


@POSIX_ONLY
def test_a_plain_run_again_finds_and_repairs_a_corruption_that_put_the_mtime_back(artifact_server, tmp_path):
    site, _ = corrupted_install(artifact_server, tmp_path)
    again = install(site, tmp_path)
    assert checkpoint(again).read_bytes() == site.models["tiny.safetensors"] and model_requests(artifact_server) == 2
    assert models_step(again) == ("done", "1 model(s) in place, SHA-256 verified (512.0 KB); 1 re-hashed, 1 replaced")
    assert again.layout.read_state()["verified"][MODEL] == _fingerprint(checkpoint(again), site_model(again))


@POSIX_ONLY
def test_a_model_swapped_in_by_a_rename_is_hashed_again(artifact_server, tmp_path):
    site = make_site(artifact_server, tmp_path)
    installer = install(site, tmp_path)
    path, copy = checkpoint(installer), installer.layout.root / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    corrupt_keeping_mtime(copy)
    os.utime(copy, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.replace(copy, path)  # same size, same mtime, another inode
    again = install(site, tmp_path)
    assert path.read_bytes() == site.models["tiny.safetensors"] and "1 replaced" in models_step(again)[1]


def test_a_run_again_trusts_the_record_and_hashes_nothing(artifact_server, tmp_path):
    site = make_site(artifact_server, tmp_path)
    install(site, tmp_path)
    again = install(site, tmp_path)
    assert models_step(again) == ("skipped", "all 1 model(s) already in place and verified")


def bit_rot(installer) -> None:
    """The disk changed the bytes and nothing else: make the record match the damaged file."""
    corrupt_keeping_mtime(checkpoint(installer))
    state = installer.layout.read_state()
    state["verified"][MODEL] = _fingerprint(checkpoint(installer), site_model(installer))
    installer.layout.state_file.write_text(json.dumps(state))


def test_verify_all_rehashes_every_model_and_replaces_one_its_record_still_vouched_for(artifact_server, tmp_path):
    site = make_site(artifact_server, tmp_path)
    bit_rot(install(site, tmp_path))
    plain = install(site, tmp_path)
    assert models_step(plain)[0] == "skipped" and model_requests(artifact_server) == 1  # the record is trusted
    repaired = install(site, tmp_path, verify_all=True)
    assert checkpoint(repaired).read_bytes() == site.models["tiny.safetensors"] and model_requests(artifact_server) == 2
    assert models_step(repaired) == ("done",
                                     "1 model(s) in place, SHA-256 verified (512.0 KB); 1 re-hashed, 1 replaced")


def test_verify_all_with_nothing_wrong_downloads_nothing_and_says_what_it_checked(artifact_server, tmp_path):
    site = make_site(artifact_server, tmp_path)
    install(site, tmp_path)
    reports = []
    checked = install(site, tmp_path, reports, verify_all=True)
    assert models_step(checked) == ("skipped", "all 1 model(s) already in place and verified; 1 re-hashed, 0 replaced")
    assert model_requests(artifact_server) == 1
    assert "Tiny checkpoint: checking the file already there (100%)" in [r["message"] for r in reports]


def test_a_replacement_that_fails_leaves_no_record_vouching_for_the_bad_file(artifact_server, tmp_path):
    site = make_site(artifact_server, tmp_path)
    installer = install(site, tmp_path)
    bit_rot(installer)
    artifact_server.faults["/models/tiny.safetensors"].statuses.append(404)
    with pytest.raises(InstallError) as error:
        install(site, tmp_path, verify_all=True)
    assert error.value.step == "models" and "HTTP 404" in error.value.cause
    assert MODEL not in installer.layout.read_state()["verified"]  # the next plain run hashes it again
    again = install(site, tmp_path)
    assert checkpoint(again).read_bytes() == site.models["tiny.safetensors"]


def test_verify_all_is_an_option_of_every_front():
    from workers.management.commands.install_comfyui import Command

    cli = argparse.ArgumentParser()
    add_install_arguments(cli)
    django = Command().create_parser("manage.py", "install_comfyui")
    for parser in (cli, django):
        assert options_from_args(parser.parse_args(["--verify-all"])).verify_all is True
        assert options_from_args(parser.parse_args([])).verify_all is False


def test_a_gated_model_fails_the_step_naming_its_page_and_the_token_is_in_no_state(tmp_path, monkeypatch):
    loopback_names(monkeypatch, "huggingface.co")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    reports = []
    with ArtifactServer() as server:
        release = standin_release()
        path = "/acme/gated/resolve/main/tiny.safetensors"
        server.add(path, b"x" * 1000, Fault(statuses=[403]))
        manifest = write_manifest(tmp_path / "manifest.json", server.add("/release.tar.gz", release), release,
                                  [("Gated", server.url(path, "huggingface.co"), b"x" * 1000, "models/checkpoints",
                                    "gated.safetensors", False)])
        with pytest.raises(InstallError) as error:
            install(type("Site", (), {"manifest": manifest}), tmp_path, reports)
    assert error.value.step == "models" and "gated" in error.value.cause
    assert "open https://huggingface.co/acme/gated signed in" in error.value.fix
    assert server.authorizations == [("/release.tar.gz", None), (path, "Bearer hf_secret")]
    state_files = [p.read_text() for p in (tmp_path / "install").rglob("*.json")]
    assert state_files and not [t for t in state_files + [json.dumps(reports)] if "hf_secret" in t]
