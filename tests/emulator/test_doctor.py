"""``skyward-ray doctor`` against the emulator with Vast's documented behaviour (rate limits on, ``GET /ssh/`` 404 for
no keys): every free check ok, and each deviating answer reported on its own row with the right exit code and nothing
left rented. The emulator's host runtime here is records-only, so rentals never answer SSH; the full ``--rent`` and
``--overlay`` runs on network-namespace hosts are in tests/e2e/test_doctor_rent.py.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from skyward_ray.cli import main
from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator
from skyward_ray.vast.client import VastClient

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    with running_emulator(seed=0, boot_delay_s=0.5) as server:  # documented rate limits: the default
        yield server


@pytest.fixture
def ssh_key_path(tmp_path: Path) -> str:
    path = tmp_path / "keys" / "id_ed25519"
    path.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, emu: EmulatorServer | None) -> None:
    """A user with no key files and no cluster_configs, pointed at the emulator."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.chdir(tmp_path)
    if emu is None:
        monkeypatch.delenv("VAST_API_KEY", raising=False)
        monkeypatch.delenv("VAST_URL", raising=False)
    else:
        monkeypatch.setenv("VAST_URL", emu.url)
        monkeypatch.setenv("VAST_API_KEY", emu.api_key)


def run_doctor(emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
               ) -> tuple[int, dict[str, Any]]:
    _env(monkeypatch, tmp_path, emu)
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    code = main(["doctor", "--report", str(report), *args])
    return code, json.loads(report.read_text())


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["check"]: row for row in report["rows"]}


def live_instances(emu: EmulatorServer) -> list[int]:
    with VastClient(api_key=emu.api_key, base_url=emu.url) as client:
        return [instance.id for instance in client.list_instances()]


def counters(emu: EmulatorServer) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{emu.admin_url}/counters/", timeout=10).json()


def count_429(emu: EmulatorServer) -> int:
    return sum(statuses.get("429", 0) for statuses in counters(emu)["statuses"].values())


def test_free_checks_all_ok_against_documented_behaviour(emu: EmulatorServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_doctor(emu, tmp_path, monkeypatch)
    found = rows(report)
    assert code == 0, report["verdict"]
    assert [row["check"] for row in report["rows"]] == [
        "api key", "api server", "key accepted", "ssh keys", "instance list", "instance list (unpaged)", "overlays",
        "on-demand search", "bid search", "placement", "balance", "rate limits"]
    assert all(row["ok"] == "ok" for row in report["rows"]), [r for r in report["rows"] if r["ok"] != "ok"]
    assert "$VAST_API_KEY" in found["api key"]["observed"]
    assert "HTTP 404" in found["ssh keys"]["observed"]  # an account without keys, as Vast documents
    assert "on a physical cluster" in found["on-demand search"]["observed"]
    assert "$" in found["placement"]["observed"]
    assert count_429(emu) == 0  # the doctor never earns a 429 by its own pace
    out = capsys.readouterr().out
    assert "verdict: ready for ray up" in out
    assert emu.api_key not in out and emu.api_key not in json.dumps(report)


def test_json_goes_to_stdout_alone(emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, tmp_path, emu)
    assert main(["doctor", "--json"]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)  # nothing but the report on stdout
    assert report["exit_code"] == 0 and report["verdict"] == "verdict: ready for ray up"
    assert "[  ok] key accepted" in printed.err  # the rows still show as they come, on stderr
    assert emu.api_key not in printed.out + printed.err


def test_the_users_vast_config_is_checked_and_overlays_it_needs_must_be_available(
        emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cluster_configs").mkdir()
    shutil.copy(REPO_ROOT / "cluster_configs" / "vast.yaml", tmp_path / "cluster_configs" / "vast.yaml")
    code, report = run_doctor(emu, tmp_path, monkeypatch)
    assert code == 0, report["verdict"]
    assert report["config"].endswith("cluster_configs/vast.yaml")
    placement = rows(report)["placement"]["observed"]
    assert placement.startswith("physical cluster ") and "workers" in placement  # head + 2 workers on one cluster

    emu.market.set_faults(emu.market.faults.merged({"overlays_available": False}))
    code, report = run_doctor(emu, tmp_path, monkeypatch)
    overlays = rows(report)["overlays"]
    assert code == 1 and overlays["ok"] == "FAIL" and "this cluster needs one" in overlays["observed"]


def test_unavailable_overlays_only_warn_a_single_node_cluster_and_stop_overlay(
        emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_key_path: str) -> None:
    emu.market.set_faults(emu.market.faults.merged({"overlays_available": False}))
    code, report = run_doctor(emu, tmp_path, monkeypatch)
    overlays = rows(report)["overlays"]
    assert code == 0 and overlays["ok"] == "warn" and "single-node clusters still work" in overlays["observed"]
    code, report = run_doctor(emu, tmp_path, monkeypatch, "--overlay", "--yes", "--ssh-key", ssh_key_path)
    assert code == 1 and rows(report)["overlay: rent"]["ok"] == "FAIL"
    assert report["rented"] == [] and live_instances(emu) == []


def test_a_row_with_an_unknown_field_type_is_named_on_its_row(emu: EmulatorServer, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with VastClient(api_key=emu.api_key, base_url=emu.url) as client:
        offer = client.search_offers({"rentable": {"eq": True}, "limit": 1})[0]
        odd = client.create_instance(offer.id, image="vastai/base", disk_gb=10, label="someone-else").new_contract
    original = emu.market.row
    monkeypatch.setattr(emu.market, "row",
                        lambda inst: {**original(inst), "dph_total": {"usd": 0.3}})  # a new shape of a known field
    try:
        code, report = run_doctor(emu, tmp_path, monkeypatch)
    finally:
        monkeypatch.undo()
        with VastClient(api_key=emu.api_key, base_url=emu.url) as client:
            client.destroy_instance(odd)
    row = rows(report)["instance list"]
    assert "dph_total (dict)" in row["observed"], row
    assert "0.3" not in row["observed"]  # the type, never the value
    # Our client reads the rest of the row (ray up works): a warning to attach to a bug, not a failed run.
    assert row["ok"] == "warn" and "our client keeps every row" in row["observed"]
    assert code == 0
    assert live_instances(emu) == []


def test_a_429_storm_is_reported_with_vasts_bodies_and_fails_the_run(emu: EmulatorServer, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    emu.market.set_faults(emu.market.faults.merged({"rate_limit": {"random_rate": 1.0}}))
    started = time.monotonic()
    code, report = run_doctor(emu, tmp_path, monkeypatch, "--api-deadline", "2", "--rent", "--yes")
    found = rows(report)
    assert code == 1
    assert found["key accepted"]["ok"] == "FAIL" and "429" in found["key accepted"]["observed"]
    limits = found["rate limits"]
    assert limits["ok"] == "warn"
    assert "API requests too frequent" in limits["observed"] and "no Retry-After" in limits["observed"]
    assert limits["details"]["rate_limited"] >= 2
    assert found["rent"]["ok"] == "skip"  # nothing rented without an accepted key
    assert time.monotonic() - started < 60
    assert not any(key.startswith("PUT /api/v0/asks") for key in counters(emu)["requests"])


def test_429s_the_client_rides_out_are_a_warning(emu: EmulatorServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A share of Vast's answers are 429s whatever our pace (others sharing the key's limits): every call still
    # succeeds after the client's waits, so the run passes and the rate-limit row says what came.
    emu.market.set_faults(emu.market.faults.merged({"rate_limit": {"random_rate": 0.3}}))
    code, report = run_doctor(emu, tmp_path, monkeypatch)
    limits = rows(report)["rate limits"]
    assert code == 0, report["verdict"]
    assert limits["ok"] == "warn" and limits["details"]["rate_limited"] >= 1
    assert "no Retry-After" in limits["observed"]
    assert [row["check"] for row in report["rows"] if row["ok"] != "ok"] == ["rate limits"]


def test_a_rental_that_never_reaches_running_fails_its_row_and_is_destroyed(
        emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_key_path: str) -> None:
    emu.market.set_faults(emu.market.faults.merged({"boot_failure_rate": 1.0, "host_failure_kinds": ["stuck_loading"]}))
    code, report = run_doctor(emu, tmp_path, monkeypatch, "--rent", "--yes", "--ssh-key", ssh_key_path,
                              "--loading-timeout", "6")
    found = rows(report)
    assert code == 1
    assert found["rent: running (head)"]["ok"] == "FAIL"
    assert "still loading" in found["rent: running (head)"]["observed"]
    assert found["rent: destroyed"]["ok"] == "ok"
    assert report["rented"] and report["destroyed"] == report["rented"]
    assert live_instances(emu) == []
    assert "rate limits (whole run)" in found and count_429(emu) == 0


def test_an_overlay_whose_subnet_never_appears_fails_and_leaves_nothing(
        emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_key_path: str) -> None:
    original = emu.market.list_overlays
    monkeypatch.setattr(emu.market, "list_overlays",
                        lambda caller: [{**row, "internal_subnet": None} for row in original(caller)])
    code, report = run_doctor(emu, tmp_path, monkeypatch, "--overlay", "--yes", "--ssh-key", ssh_key_path,
                              "--overlay-timeout", "3")
    found = rows(report)
    assert code == 1
    create = found["overlay: create head"]
    assert create["ok"] == "FAIL" and "overlay" in create["observed"] and "did not appear" in create["observed"]
    assert found["overlay: destroyed"]["ok"] == "ok"
    assert "deleted" in found["overlay: destroyed"]["observed"]
    assert report["rented"] == []
    assert live_instances(emu) == []
    with VastClient(api_key=emu.api_key, base_url=emu.url) as client:
        assert client.list_overlays() == []


def test_the_report_holds_no_secret(emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    ssh_key_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    instance_keys: list[str] = []
    original = emu.market.create_instance

    def recording(*args: Any, **kwargs: Any) -> Any:
        answer = original(*args, **kwargs)
        instance_keys.append(answer["instance_api_key"])
        return answer

    monkeypatch.setattr(emu.market, "create_instance", recording)
    code, report = run_doctor(emu, tmp_path, monkeypatch, "--rent", "--yes", "--ssh-key", ssh_key_path,
                              "--ssh-timeout", "2")
    assert instance_keys, "the run rented something"
    assert code == 1  # records-only hosts never answer SSH
    printed = capsys.readouterr()
    text = json.dumps(report) + printed.out + printed.err
    for secret in [emu.api_key, *instance_keys]:
        assert secret not in text
    assert live_instances(emu) == []


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.yaml"], "--config: 'missing.yaml' is not allowed (no such file"),
    (["--rent", "--yes", "--max-dph", "0.01"], "--max-dph 0.01 is below every verified on-demand"),
    (["--max-dph", "0"], "--max-dph: 0.0 is not allowed"),
    (["--rent", "--disk-gb", "4"], "--disk-gb: 4 is not allowed"),
])
def test_bad_input_is_one_line_and_rents_nothing(emu: EmulatorServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 args: list[str], message: str) -> None:
    _env(monkeypatch, tmp_path, emu)
    assert main(["doctor", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err
    assert live_instances(emu) == []
    assert not any(key.startswith("PUT /api/v0/asks") for key in counters(emu)["requests"])


def test_an_invalid_config_is_one_line_naming_the_field(emu: EmulatorServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load((REPO_ROOT / "cluster_configs" / "vast.yaml").read_text())
    config["provider"]["min_reliabilty"] = 0.9  # misspelt
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    _env(monkeypatch, tmp_path, emu)
    assert main(["doctor", "--config", "bad.yaml"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "min_reliabilty" in err[0] and "min_reliability" in err[0], err


def test_a_rental_not_confirmed_rents_nothing(emu: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              ssh_key_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_doctor(emu, tmp_path, monkeypatch, "--rent", "--ssh-key", ssh_key_path)  # stdin: no terminal
    assert code == 0
    asked = rows(report)["rent: asked"]
    assert asked["ok"] == "skip" and "nothing rented" in asked["observed"]
    assert "at most $0.50/h each" in capsys.readouterr().err  # the price ceiling was shown
    assert live_instances(emu) == []


def test_no_key_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, tmp_path, None)
    assert main(["doctor", "--rent", "--yes"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no Vast API key" in err[0], err


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_rental_destroys_it_and_says_so(tmp_path: Path, ssh_key_path: str, sig: signal.Signals
                                                       ) -> None:
    with running_emulator(seed=0, boot_delay_s=120) as server:  # the rental stays loading while we interrupt
        env = {**os.environ, "VAST_URL": server.url, "VAST_API_KEY": server.api_key, "HOME": str(tmp_path),
               "XDG_CONFIG_HOME": str(tmp_path / ".config")}
        cmd = [sys.executable, "-m", "skyward_ray.cli", "doctor", "--rent", "--yes", "--ssh-key", ssh_key_path,
               "--loading-timeout", "300"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=tmp_path, stdin=subprocess.DEVNULL)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        seen: list[str] = []
        try:
            deadline = time.monotonic() + 120
            while not any("rent: create head" in line for line in seen):
                assert time.monotonic() < deadline, "".join(seen)
                try:
                    seen.append(lines.get(timeout=1))
                except queue.Empty:
                    assert proc.poll() is None, "".join(seen)
            rented = live_instances(server)
            assert len(rented) == 1
            proc.send_signal(sig)
            assert proc.wait(timeout=90) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        time.sleep(0.2)
        while not lines.empty():
            seen.append(lines.get())
        output = "".join(seen)
        assert f"destroyed: {rented[0]}" in output, output
        assert "verdict: interrupted" in output
        assert live_instances(server) == []
