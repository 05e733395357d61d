"""The commands a user types: vgpu run / up / down / env / smi / profiles, and gpustat and nvitop under vgpu."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vgpu.device.gpuset import parse

BIN = Path(sys.executable).parent


def vgpu(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vgpu"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env or os.environ.copy())


def test_run_passes_the_exit_status_back():
    result = vgpu("run", "--gpus", "t4", "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert result.returncode == 7
    missing = vgpu("run", "--", "no-such-command-vgpu")
    assert missing.returncode == 1 and "command not found" in missing.stderr


def test_run_pynvml_on_eight_h200():
    code = ("import pynvml as n; n.nvmlInit(); "
            "print(n.nvmlDeviceGetName(n.nvmlDeviceGetHandleByIndex(7)), n.nvmlDeviceGetCount())")
    result = vgpu("run", "--gpus", "8xh200", "--", sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "NVIDIA H200 8"


def test_smi_table_shows_every_gpu_and_process():
    result = vgpu("run", "--gpus", "2xh100", "--", "sh", "-c",
                  f"{BIN / 'vgpu'} workload --gpu 1 --memory 5g --utilization 50 --seconds 3 & sleep 1.5; "
                  f"{BIN / 'vgpu'} smi; wait")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Driver Version: 590.48.01" in out and "CUDA Version: 13.5" in out
    assert out.count("NVIDIA H100 80GB HBM3") == 2
    assert "00000000:18:00.0" in out and "00000000:2A:00.0" in out
    assert "5120MiB /  81559MiB" in out
    assert "No running processes found" not in out and "5120MiB" in out.split("Processes:")[1]
    widths = {len(line) for line in out.splitlines() if line.startswith(("|", "+"))}
    assert widths == {91}, "every table line has nvidia-smi's width"


def test_smi_query_csv_and_formats():
    fields = "index,name,uuid,pci.bus_id,driver_version,memory.total,memory.used,memory.free," \
             "utilization.gpu,temperature.gpu,power.draw,power.limit"
    result = vgpu("run", "--gpus", "h100,l4", "--", str(BIN / "vgpu"), "smi", f"--query-gpu={fields}",
                  "--format=csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout), skipinitialspace=True))
    assert rows[0][:6] == ["index", "name", "uuid", "pci.bus_id", "driver_version", "memory.total [MiB]"]
    expected = parse("h100,l4").gpus
    assert [r[1] for r in rows[1:]] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert [r[2] for r in rows[1:]] == [g.uuid for g in expected]
    assert rows[1][5] == "81559 MiB" and rows[2][5] == "23034 MiB"
    assert rows[1][11] == "700.00 W" and rows[2][11] == "72.00 W"
    bare = vgpu("run", "--gpus", "h100", "--", str(BIN / "vgpu"), "smi", "--query-gpu=index,memory.total",
                "--format=csv,noheader,nounits")
    assert bare.stdout.strip() == "0, 81559"
    bad = vgpu("run", "--gpus", "h100", "--", str(BIN / "vgpu"), "smi", "--query-gpu=bogus", "--format=csv")
    assert bad.returncode == 1 and "bogus" in bad.stderr


def test_smi_long_report_and_json():
    report = vgpu("run", "--gpus", "a100-40gb", "--", str(BIN / "vgpu"), "smi", "-q")
    assert "==============NVSMI LOG==============" in report.stdout
    assert "NVIDIA A100-SXM4-40GB" in report.stdout and "0x20B010DE" in report.stdout
    assert "40960 MiB" in report.stdout
    as_json = vgpu("run", "--gpus", "a100-40gb", "--", str(BIN / "vgpu"), "smi", "--json")
    data = json.loads(as_json.stdout)
    assert data["gpus"][0]["memory_total"] == 40960 << 20 and data["driver_version"] == "590.48.01"


def test_up_status_env_down(tmp_path):
    env = {**os.environ, "VGPU_SOCKET": str(tmp_path / "vgpud.sock")}
    up = vgpu("up", "--gpus", "4xa100-80gb", env=env)
    assert up.returncode == 0, up.stderr
    try:
        assert vgpu("up", "--gpus", "4xa100-80gb", env=env).returncode == 0, "up twice is fine"
        clash = vgpu("up", "--gpus", "h100", env=env)
        assert clash.returncode == 1 and "vgpu down" in clash.stderr
        query = vgpu("smi", "--query-gpu=index,name,memory.total", "--format=csv", env=env)
        assert query.stdout.splitlines()[1:] == [f"{i}, NVIDIA A100-SXM4-80GB, 81920 MiB" for i in range(4)]
        status = json.loads(vgpu("status", "--json", env=env).stdout)
        assert len(status["gpus"]) == 4 and status["spec"] == "4xa100-80gb"
        exports = vgpu("env", env=env).stdout
        shell = subprocess.run(["sh", "-c", exports + f'\n"{sys.executable}" -c "import pynvml as n; n.nvmlInit(); '
                                                      f'print(n.nvmlDeviceGetCount())"'],
                               capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
        assert shell.stdout.strip() == "4", shell.stderr
    finally:
        down = vgpu("down", env=env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not (tmp_path / "vgpud.sock").exists()
    assert "no vgpud" in vgpu("down", env=env).stdout


def test_fault_commands(tmp_path):
    env = {**os.environ, "VGPU_SOCKET": str(tmp_path / "vgpud.sock")}
    assert vgpu("up", "--gpus", "2xh100", env=env).returncode == 0
    try:
        assert "Xid 79" in vgpu("fault", "inject", "--gpu", "1", "lost", env=env).stdout
        table = vgpu("smi", env=env).stdout
        assert "GPU is lost" in table
        assert vgpu("fault", "inject", "--gpu", "5", "xid=13", env=env).returncode == 1
        assert vgpu("fault", "clear", env=env).returncode == 0
        assert "GPU is lost" not in vgpu("smi", env=env).stdout
    finally:
        vgpu("down", env=env)


def test_profiles_lists_every_profile():
    result = vgpu("profiles", "--json")
    profiles = json.loads(result.stdout)
    assert set(profiles) >= {"h100", "h200", "a100-40gb", "a100-80gb", "l4", "l40s", "t4", "rtx4090"}


def test_gpustat_json_under_vgpu_run():
    result = vgpu("run", "--gpus", "h100,l4", "--", sys.executable, "-m", "gpustat", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["driver_version"] == "590.48.01"
    gpus = data["gpus"]
    assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert [g["memory.total"] for g in gpus] == [81559, 23034]
    assert [g["enforced.power.limit"] for g in gpus] == [700, 72]
    assert all(g["memory.used"] == 0 and g["processes"] == [] for g in gpus)


@pytest.mark.skipif(shutil.which("nvitop", path=str(BIN)) is None, reason="nvitop is in the test extras")
def test_nvitop_one_shot_under_vgpu_run():
    result = vgpu("run", "--gpus", "2xh100,t4", "--", str(BIN / "nvitop"), "-1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Driver Version: 590.48.01" in out and "CUDA Driver Version: 13.5" in out
    assert out.count("H100 80GB HBM3") == 2 and "Tesla T4" in out
    assert "00000000:2A:00.0" in out and "700W" in out
    assert "No running processes found" in out


def test_smi_says_what_the_gpus_are(vgpud_factory, tmp_path):
    """`vgpu smi` notes simulated GPUs on the simulator, and real ones on the cuda backend
    (here with vgpu's own driver over a simulator standing in for the GPU)."""
    from tests.conftest import start_vgpud
    from vgpu.smi.render import REAL_NOTE

    simulated = vgpud_factory("l4")
    backend = start_vgpud("l4", tmp_path / "cuda", "cuda-backend")
    try:
        notes = []
        for daemon in (simulated, backend):
            shown = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "smi"], env=daemon.env,
                                   capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0, shown.stderr
            assert "NVIDIA L4" in shown.stdout
            notes.append(shown.stdout.strip().splitlines()[-1])
        assert notes == ["vgpu: simulated GPUs; kernels with PTX compute on the host's CPUs (0 launches computed, "
                         "0 not: `vgpu launches`)", REAL_NOTE]
    finally:
        backend.stop()
