"""Two GPU hosts joined by one relay into one device list (vgpu.remote.join): what a client
process sees and does across them. The CUDA and NVML suites also run through such a relay
(EVERY_WAY in conftest); these tests check what only a join has."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import free_port, listen_options, run_json, start_vgpud, tls_files
from vgpu import launcher
from vgpu.remote.relay import upstreams
from vgpu.remote.tokens import TokenStore
from vgpu.wire.client import Client


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """An H100 on one GPU host and an L4 on another, behind one relay."""
    daemon = start_vgpud("h100,l4", tmp_path_factory.mktemp("joined"), "joined")
    yield daemon
    daemon.stop()


def host_control(joined, host: int, cmd: str, **args):
    """A GPU host's own tools (its local socket), not the relay."""
    with Client(joined.socket.parent / f"host{host}.sock") as client:
        return client.control(cmd, **args)


ACROSS = """
import json, os, pynvml, torch
pynvml.nvmlInit()
handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
out = {"nvml": [[pynvml.nvmlDeviceGetName(h), pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetPciInfo(h).busId,
                 pynvml.nvmlDeviceGetIndex(h)] for h in handles],
       "by_uuid": [pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(pynvml.nvmlDeviceGetUUID(h)))
                   for h in handles],
       "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
       "peer": [torch.cuda.can_device_access_peer(0, 1), torch.cuda.can_device_access_peer(1, 0)]}
from cuda.bindings import driver as cu
rc, access = cu.cuDeviceGetP2PAttribute(
    cu.CUdevice_P2PAttribute.CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED, cu.CUdevice(0), cu.CUdevice(1))
out["p2p_access"] = [int(rc), access]
data = torch.randn(1 << 20)                  # made here: the simulator does not compute kernels
x = data.to("cuda:0")
on_l4 = x.to("cuda:1")                       # from the first host to the second
back = on_l4[1:].to("cuda:0")                # and back, from an offset
out["copies"] = [torch.equal(on_l4.cpu(), data), torch.equal(back.cpu(), data[1:])]
for device in ("cuda:0", "cuda:1"):          # a GEMM on each GPU
    a = torch.ones(256, 256, device=device)
    a @ a
    torch.cuda.synchronize(device)
print(json.dumps(out))
"""


def test_one_process_uses_the_gpus_of_both_hosts(joined):
    out = run_json(ACROSS, joined.env, timeout=120)
    h100, l4 = joined.gpus
    assert [g[:3] for g in out["nvml"]] == [["NVIDIA H100 80GB HBM3", h100.uuid, h100.pci_bus_id],
                                            ["NVIDIA L4", l4.uuid, l4.pci_bus_id]]
    assert h100.pci_bus_id != l4.pci_bus_id, "the hosts' PCI domains tell their GPUs apart"
    assert [g[3] for g in out["nvml"]] == out["by_uuid"] == [0, 1]
    assert out["cuda"] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert out["peer"] == [False, False], "GPUs on two hosts cannot reach each other"
    assert out["p2p_access"] == [0, 0]
    assert out["copies"] == [True, True]
    # each host ran its own GPU's kernels; the relay shows them all, numbered across hosts
    kernels = [{launch["gpu"] for launch in host_control(joined, host, "launches")["launches"]} for host in (0, 1)]
    assert kernels == [{0}, {0}]
    pairs = {(launch["gpu"], launch["host"]) for launch in joined.control("launches")["launches"]}
    assert {gpu for gpu, _ in pairs} == {0, 1} and len({host for _, host in pairs}) == 2 == len(pairs)


def test_status_through_the_relay_names_each_gpus_host(joined):
    status = joined.control("status")
    assert [(g["index"], g["name"], g["host_index"]) for g in status["gpus"]] == [
        (0, "NVIDIA H100 80GB HBM3", 0), (1, "NVIDIA L4", 0)]
    assert len({g["host"] for g in status["gpus"]}) == 2 and len(status["hosts"]) == 2
    assert status["relay"]["connect"].count(",") == 1
    shown = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "status"], capture_output=True, text=True,
                           env={**os.environ, "VGPU_SOCKET": str(joined.socket)}, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "NVIDIA L4" in shown.stdout and status["gpus"][1]["host"] in shown.stdout


@pytest.mark.parametrize("visible", ["1", "GPU-{l4}"])
def test_cuda_visible_devices_picks_across_hosts(joined, visible):
    """CUDA_VISIBLE_DEVICES counts the joined list; the GPU it leaves gets the work."""
    env = {**joined.env, "CUDA_VISIBLE_DEVICES": visible.format(l4=joined.gpus[1].uuid.removeprefix("GPU-"))}
    before = len(host_control(joined, 1, "launches")["launches"])
    out = run_json("""
import json, torch
data = torch.randn(1000)
x = data.cuda()
x + x
print(json.dumps([torch.cuda.device_count(), torch.cuda.get_device_name(0), torch.equal(x.cpu(), data)]))
""", env, timeout=120)
    assert out == [1, "NVIDIA L4", True]
    assert len(host_control(joined, 1, "launches")["launches"]) > before


def test_a_gpu_cannot_be_joined_twice(tmp_path):
    """Two simulators with the same GPU set and PCI domain offer the same UUIDs: refused,
    naming the fix."""
    tls_files(tmp_path)
    token = TokenStore(tmp_path / "state").create("twice")
    ports = [free_port(), free_port()]
    hosts = [launcher.start_daemon("h100", tmp_path / f"h{k}.sock", tmp_path / f"h{k}.log", detach=False,
                                   options=listen_options(tmp_path, f"127.0.0.1:{port}"))
             for k, port in enumerate(ports)]
    try:
        relay = subprocess.run(
            [sys.executable, "-m", "vgpu.server.main", "--backend", "remote", "--socket", str(tmp_path / "r.sock"),
             *(x for port in ports for x in ("--connect", f"localhost:{port}")), "--ca", str(tmp_path / "ca.pem")],
            env={**os.environ, "VGPU_TOKEN": token}, capture_output=True, text=True, timeout=30)
        assert relay.returncode == 1
        assert "one GPU cannot be joined twice" in relay.stderr and "--pci-domain" in relay.stderr
    finally:
        for host in hosts:
            host.terminate()
            host.wait(10)


def test_tokens_for_joined_hosts():
    """One token for every GPU host, or one each in order; anything else is refused."""
    one = upstreams(["a:1", "b:2"], ["t"])
    assert [(u.name, u.token) for u in one] == [("a:1", "t"), ("b:2", "t")]
    assert [u.token for u in upstreams(["a:1", "b:2"], ["t1", "t2"])] == ["t1", "t2"]
    with pytest.raises(ValueError, match="2 GPU hosts and 3 tokens"):
        upstreams(["a:1", "b:2"], ["t1", "t2", "t3"])


def test_up_joins_hosts_with_a_token_each(tmp_path):
    """`vgpu up --backend remote --connect A --token TA --connect B --token TB` checks both
    hosts and starts one relay for their GPUs."""
    hosts, ports, tokens = [], [], []
    for k, gpus in enumerate(("h100", "l4")):
        folder = tmp_path / f"host{k}"
        folder.mkdir()
        tls_files(folder)
        ports.append(free_port())
        tokens.append(TokenStore(folder / "state").create(f"team{k}"))
        hosts.append(launcher.start_daemon(gpus, folder / "h.sock", folder / "h.log", detach=False, options=(
            *listen_options(folder, f"127.0.0.1:{ports[-1]}"), "--pci-domain", str(k))))
    bundle = tmp_path / "cas.pem"
    bundle.write_text("".join((tmp_path / f"host{k}" / "ca.pem").read_text() for k in (0, 1)))
    env = {**os.environ, "VGPU_SOCKET": str(tmp_path / "relay.sock")}
    try:
        up = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "up", "--backend", "remote",
                             "--connect", f"localhost:{ports[0]}", "--token", tokens[0],
                             "--connect", f"localhost:{ports[1]}", "--token", tokens[1], "--ca", str(bundle)],
                            env=env, capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        assert "NVIDIA H100" in up.stdout and "NVIDIA L4" in up.stdout
        names = run_json("import json, pynvml\npynvml.nvmlInit()\nprint(json.dumps([pynvml.nvmlDeviceGetName("
                         "pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]))",
                         launcher.client_environment(tmp_path / "relay.sock"))
        assert names == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    finally:
        launcher.down(tmp_path / "relay.sock")
        for host in hosts:
            host.terminate()
            host.wait(10)


def test_a_gpu_host_that_goes_away_takes_only_its_gpus(tmp_path):
    """When one joined host goes, calls for its GPU answer CUDA_ERROR_DEVICE_UNAVAILABLE and
    NVML_ERROR_GPU_IS_LOST at once (no hang); the other host's GPU goes on working, and the
    running process keeps its numbering; a new process has the other host's GPU."""
    daemon = start_vgpud("h100,l4", tmp_path / "gone", "joined")
    try:
        code = """
import json, sys, time
import pynvml
from cuda.bindings import driver as cu
cu.cuInit(0)
pynvml.nvmlInit()
contexts = [cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(i)[1])[1] for i in (0, 1)]
def answer(call, *args):
    try:
        return call(*args)
    except pynvml.NVMLError as error:
        return error.value
handles = [answer(pynvml.nvmlDeviceGetHandleByIndex, i) for i in (0, 1)]
def allocate(ctx):
    cu.cuCtxSetCurrent(ctx)
    return int(cu.cuMemAlloc(1 << 20)[0])
def memory(handle):
    if isinstance(handle, int):  # no handle: NVML's error
        return handle
    return answer(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).total > 0)
print(json.dumps([allocate(ctx) for ctx in contexts] + [memory(h) for h in handles]), flush=True)
sys.stdin.readline()
started = time.monotonic()
after = [allocate(contexts[1]), memory(handles[1]), allocate(contexts[0]), memory(handles[0]),
         int(cu.cuCtxSynchronize()[0]), pynvml.nvmlDeviceGetCount()]
print(json.dumps({"after": after, "seconds": time.monotonic() - started}), flush=True)
"""
        env = {**daemon.env, "VGPU_TIMEOUT_MS": "1500"}
        client = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert json.loads(client.stdout.readline()) == [0, 0, True, True]
        daemon.others[1].kill()  # the L4's host
        daemon.others[1].wait(10)
        client.stdin.write("\n")
        client.stdin.flush()
        answer = json.loads(client.stdout.readline())
        client.wait(10)
        # CUDA_ERROR_DEVICE_UNAVAILABLE and NVML_ERROR_GPU_IS_LOST for the L4; the H100 works
        assert answer["after"] == [46, 15, 0, True, 0, 2], answer
        assert answer["seconds"] < 5
        # a process that starts now has the H100 for CUDA; NVML lists the L4 lost, answering its
        # handle with NVML_ERROR_GPU_IS_LOST as for a GPU that fell off the bus
        fresh = run_json("""
import json, pynvml
from cuda.bindings import driver as cu
pynvml.nvmlInit()
def answer(call, *args):
    try:
        return call(*args)
    except pynvml.NVMLError as error:
        return error.value
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
print(json.dumps([int(cu.cuInit(0)[0]), cu.cuDeviceGetCount()[1], cu.cuDeviceGetName(64, 0)[1].split(b"\\0")[0].decode(),
                  pynvml.nvmlDeviceGetCount(), pynvml.nvmlDeviceGetName(handle),
                  answer(pynvml.nvmlDeviceGetHandleByIndex, 1)]))
""", env)
        assert fresh == [0, 1, "NVIDIA H100 80GB HBM3", 2, "NVIDIA H100 80GB HBM3", 15]
    finally:
        daemon.stop()


def test_malformed_frames_through_a_join_cost_only_their_connection(joined):
    """The joining relay reads every frame: random payloads for NVML and CUDA calls, modules
    and launches end the sender's connection at worst, with no traceback in the relay's log,
    while other clients go on."""
    import random

    from vgpu.api.manifest import load
    from vgpu.wire import protocol

    rng = random.Random(7)
    answered = closed = 0
    for name in ("nvml", "cuda"):
        api = load(name)
        client = Client(joined.socket, api=name, digest=api.digest)
        ops = [f.op for f in api.functions if f.encodable and not f.local][:300]
        if name == "cuda":
            ops += [protocol.OP_MODULE, protocol.OP_LAUNCH] * 20
        for _ in range(400):
            op = rng.choice(ops)
            payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 3, 8, 9, 16, 24, 40, 64, 120])))
            try:
                assert len(client.request(op, payload)) >= 4
                answered += 1
            except (ConnectionError, protocol.ProtocolError, EOFError, OSError):
                closed += 1
                client.close()
                client = Client(joined.socket, api=name, digest=api.digest)
        client.close()
    assert answered and closed
    out = run_json("import json, pynvml\npynvml.nvmlInit()\nprint(json.dumps(pynvml.nvmlDeviceGetCount()))", joined.env)
    assert out == 2, "other clients go on"
    log = joined.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def test_an_event_set_watches_the_gpus_of_every_host(joined):
    """What the Kubernetes device plugin does for health checks: one event set, every GPU
    registered for critical Xids, a wait. The set lives on every host; an Xid on the second
    host's GPU reaches the waiter with that GPU's handle, and a quiet wait times out."""
    code = """
import json, sys, time
import pynvml as n
n.nvmlInit()
handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
event_set = n.nvmlEventSetCreate()
for handle in handles:
    n.nvmlDeviceRegisterEvents(handle, n.nvmlEventTypeXidCriticalError, event_set)
started = time.monotonic()
try:
    n.nvmlEventSetWait(event_set, 200)
    quiet = "event"
except n.NVMLError_Timeout:
    quiet = round(time.monotonic() - started, 2)
print(json.dumps({"quiet": quiet}), flush=True)
sys.stdin.readline()
data = n.nvmlEventSetWait(event_set, 5000)
print(json.dumps({"xid": data.eventData, "uuid": n.nvmlDeviceGetUUID(data.device),
                  "index": n.nvmlDeviceGetIndex(data.device)}), flush=True)
n.nvmlEventSetFree(event_set)
"""
    client = subprocess.Popen([sys.executable, "-c", code], env=joined.env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    quiet = json.loads(client.stdout.readline())["quiet"]
    assert quiet != "event" and 0.15 <= quiet < 2
    host_control(joined, 1, "fault", gpu=0, kind="xid", xid=79)  # the L4 fell off the bus
    client.stdin.write("\n")
    client.stdin.flush()
    event = json.loads(client.stdout.readline())
    assert client.wait(30) == 0, client.stderr.read()
    assert event == {"xid": 79, "uuid": joined.gpus[1].uuid, "index": 1}
    host_control(joined, 1, "clear", gpu=0)
