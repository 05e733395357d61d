"""Readings vgpud publishes in shared memory: answered without a round trip, never stale."""

from __future__ import annotations

import os
import time

from vgpu.api.manifest import load


def my_calls(vgpud) -> int:
    return next(s["calls"] for s in vgpud.control("status")["sessions"] if s["pid"] == os.getpid())


def test_repeated_readings_skip_the_round_trip(vgpud, nvml):
    n = nvml
    handle = n.nvmlDeviceGetHandleByIndex(0)
    readings = [lambda: n.nvmlDeviceGetTemperature(handle, 0), lambda: n.nvmlDeviceGetPowerUsage(handle),
                lambda: n.nvmlDeviceGetUtilizationRates(handle).gpu,
                lambda: n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2).used,
                lambda: n.nvmlDeviceGetName(handle), lambda: n.nvmlDeviceGetUUID(handle)]
    first = [read() for read in readings]
    before = my_calls(vgpud)
    for _ in range(50):
        assert [read() for read in readings][4:] == first[4:]
    assert my_calls(vgpud) - before <= 2, "the readings came from shared memory"  # the status calls themselves


def test_published_answers_follow_changes_at_once(vgpud, nvml):
    n = nvml
    handle = n.nvmlDeviceGetHandleByIndex(2)
    assert n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2).used == 0
    assert n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2).used == 0
    with vgpud.client() as other:
        other.control("hold", gpu=2, bytes=5 << 30)
        assert n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2).used == 5 << 30
        other.control("release", gpu=2)
        assert n.nvmlDeviceGetMemoryInfo(handle, version=n.nvmlMemory_v2).used == 0


def test_a_dead_process_memory_leaves_the_published_answer(vgpud, nvml):
    import subprocess
    import sys

    n = nvml
    handle = n.nvmlDeviceGetHandleByIndex(1)
    assert n.nvmlDeviceGetMemoryInfo(handle).used == 479 << 20
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom vgpu.wire.client import Client\n"
                               "client = Client(sys.argv[1])\nclient.control('hold', gpu=1, bytes=1 << 30)\nprint('held', flush=True)\n"
                               "time.sleep(60)", str(vgpud.socket)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert n.nvmlDeviceGetMemoryInfo(handle).used == (479 << 20) + (1 << 30)
    holder.kill()
    holder.wait()
    deadline = time.monotonic() + 2
    while n.nvmlDeviceGetMemoryInfo(handle).used != 479 << 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert n.nvmlDeviceGetMemoryInfo(handle).used == 479 << 20


def test_time_driven_readings_refresh(vgpud, nvml):
    n = nvml
    handle = n.nvmlDeviceGetHandleByIndex(3)
    assert n.nvmlDeviceGetUtilizationRates(handle).gpu == 0
    with vgpud.client() as other:
        other.control("run", gpu=3, seconds=2.0)
        time.sleep(0.5)
        assert n.nvmlDeviceGetUtilizationRates(handle).gpu >= 40


def test_published_functions_are_fixed_size():
    api = load("nvml")
    published = [f.name for f in api.functions if f.published]
    assert "nvmlDeviceGetTemperature" in published and len(published) >= 10
