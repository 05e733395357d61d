"""Telemetry that follows what sessions do, and injected faults seen through NVML."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from vgpu.device.events import EventHub
from vgpu.device.gpu import Gpu, OutOfMemory
from vgpu.device.gpuset import parse
from vgpu.api.manifest import load
from tests.conftest import run_python, wait_for

EVENT_TYPES = {k: v for k, v in load("nvml").constants.items() if k.startswith("nvmlEventType")}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_gpu(profile: str = "h100") -> tuple[Gpu, FakeClock]:
    clock = FakeClock()
    return Gpu(parse(profile).gpus[0], EventHub(EVENT_TYPES), clock=clock), clock


def test_utilisation_power_and_temperature_follow_work():
    gpu, clock = make_gpu()
    idle_temp, idle_power = gpu.temperature_c(), gpu.power_mw()
    assert gpu.utilization() == (0, 0) and gpu.sm_clock_mhz() == gpu.profile.idle_sm_clock_mhz
    for _ in range(120):  # two minutes fully busy
        gpu.run(session=1, seconds=1.0)
        clock.now += 1.0
        gpu.power_mw()
    assert gpu.utilization()[0] == 100
    assert gpu.sm_clock_mhz() == gpu.profile.max_sm_clock_mhz
    busy_power, busy_temp = gpu.power_mw(), gpu.temperature_c()
    assert busy_power > 0.8 * gpu.profile.power_limit_w * 1000 > idle_power
    assert busy_temp >= idle_temp + 20 and busy_temp < gpu.profile.temp_slowdown_c
    clock.now += 300  # five idle minutes
    assert gpu.utilization() == (0, 0)
    assert gpu.power_mw() < busy_power / 3
    assert gpu.temperature_c() < busy_temp - 10
    assert gpu.energy_mj() > 120 * 0.8 * gpu.profile.power_limit_w * 1000


def test_memory_is_held_per_session_and_bounded():
    gpu, _ = make_gpu("t4")
    free = gpu.memory_free
    gpu.hold(1, 1 << 30)
    gpu.hold(2, 2 << 30)
    assert gpu.memory_free == free - (3 << 30) and gpu.processes() == [1, 2]
    with pytest.raises(OutOfMemory):
        gpu.hold(3, free)
    gpu.release(1)
    assert gpu.processes() == [2]


HOLDER = """
import os, sys, time
from vgpu.wire.client import Client
client = Client(sys.argv[1])
client.control("hold", gpu=1, bytes=3 << 30)
client.control("run", gpu=1, seconds=3.0)
print(os.getpid(), flush=True)
time.sleep(60)
"""

READER = """
import json, time, pynvml as n
n.nvmlInit()
time.sleep(0.3)
h = n.nvmlDeviceGetHandleByIndex(1)
print(json.dumps({
    "used": n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2).used,
    "procs": [[p.pid, p.usedGpuMemory] for p in n.nvmlDeviceGetComputeRunningProcesses(h)],
    "util": n.nvmlDeviceGetUtilizationRates(h).gpu,
    "gpu0_used": n.nvmlDeviceGetMemoryInfo(n.nvmlDeviceGetHandleByIndex(0), version=n.nvmlMemory_v2).used,
    "samples": [[s.pid, s.smUtil] for s in n.nvmlDeviceGetProcessUtilization(h, 0)],
}))
"""


def test_two_processes_see_the_same_gpus_and_each_others_memory(vgpud_factory):
    daemon = vgpud_factory("2xa100-80gb")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(daemon.socket)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(holder.stdout.readline())
        reader = run_python(READER, daemon.env)
        assert reader.returncode == 0, reader.stderr
        seen = json.loads(reader.stdout)
        assert seen["used"] == 3 << 30 and seen["procs"] == [[pid, 3 << 30]]
        assert seen["util"] >= 25 and seen["gpu0_used"] == 0
        assert seen["samples"][0][0] == pid and seen["samples"][0][1] >= 25
    finally:
        holder.kill()
        holder.wait()
    # the holder's death frees its memory
    wait_for(lambda: daemon.control("status")["gpus"][1]["memory_used"] == 0)


def test_xid_reaches_a_pynvml_event_waiter(vgpud, nvml):
    n = nvml
    handle = n.nvmlDeviceGetHandleByIndex(1)
    event_set = n.nvmlEventSetCreate()
    n.nvmlDeviceRegisterEvents(handle, n.nvmlEventTypeXidCriticalError | n.nvmlEventTypeDoubleBitEccError, event_set)
    with pytest.raises(n.NVMLError_Timeout):
        n.nvmlEventSetWait(event_set, 50)
    got = []
    waiter = threading.Thread(target=lambda: got.append(n.nvmlEventSetWait(event_set, 5000)))
    waiter.start()
    vgpud.control("fault", gpu=1, kind="xid", xid=13)  # Xid 13: graphics engine exception
    waiter.join(10)
    assert got, "the waiter got nothing"
    event = got[0]
    assert event.eventType == n.nvmlEventTypeXidCriticalError and event.eventData == 13
    assert n.nvmlDeviceGetUUID(event.device) == n.nvmlDeviceGetUUID(handle), "the event names its GPU"
    vgpud.control("fault", gpu=1, kind="ecc-dbe")
    kinds = {n.nvmlEventSetWait(event_set, 1000).eventType for _ in range(2)}
    assert kinds == {n.nvmlEventTypeDoubleBitEccError, n.nvmlEventTypeXidCriticalError}
    assert n.nvmlDeviceGetTotalEccErrors(handle, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC) == 1
    vgpud.control("fault", gpu=1, kind="ecc-sbe")
    assert n.nvmlDeviceGetTotalEccErrors(handle, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_AGGREGATE_ECC) == 1
    n.nvmlEventSetFree(event_set)
    vgpud.control("clear", gpu=1)
    assert n.nvmlDeviceGetTotalEccErrors(handle, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC) == 0
    assert n.nvmlDeviceGetTotalEccErrors(handle, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC) == 1


def test_ecc_faults_need_ecc(vgpud):
    from vgpu.wire.client import ControlFailed

    with pytest.raises(ControlFailed, match="ECC off"):
        vgpud.control("fault", gpu=3, kind="ecc-sbe")


def test_lost_gpu_answers_gpu_is_lost(vgpud, nvml):
    n = nvml
    handle = n.nvmlDeviceGetHandleByIndex(2)
    vgpud.control("fault", gpu=2, kind="lost")
    try:
        for call in (lambda: n.nvmlDeviceGetTemperature(handle, 0), lambda: n.nvmlDeviceGetName(handle),
                     lambda: n.nvmlDeviceGetHandleByIndex(2), lambda: n.nvmlDeviceGetMemoryInfo(handle)):
            with pytest.raises(n.NVMLError_GpuIsLost):
                call()
        assert n.nvmlDeviceGetName(n.nvmlDeviceGetHandleByIndex(0)) == "NVIDIA H100 80GB HBM3"
    finally:
        vgpud.control("clear", gpu=2)
    assert n.nvmlDeviceGetName(handle) == "NVIDIA L4"
