"""GPU slices, and GPUs over the network: a vgpud listening on TCP with TLS and tokens, and a
relay vgpud (backend remote) that forwards its clients to it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import Vgpud, free_port, listen_options, run_json, run_python, tls_files, wait_for
from vgpu import launcher
from vgpu.device.gpuset import parse, parse_size
from vgpu.remote.relay import FrameEnds, check
from vgpu.remote.tls import client_context
from vgpu.remote.tokens import Tenant, TokenStore
from vgpu.wire.client import Client, ControlFailed
from vgpu.wire.protocol import pack_frame

SLICE = 20 << 30


def test_sizes():
    assert parse_size("20g") == parse_size("20GiB") == parse_size("20gb") == 20 << 30
    assert parse_size("512m") == 512 << 20 and parse_size("4096") == 4096
    for bad in ("", "g", "-1g", "20x"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_slice_identities():
    whole, sliced = parse("h100").gpus[0], parse("h100:20g").gpus[0]
    assert sliced.profile.memory_total == sliced.profile.cuda_total == SLICE
    assert whole.uuid != sliced.uuid and whole.profile.name == sliced.profile.name
    with pytest.raises(ValueError, match="does not fit"):
        parse("l4:100g")


def test_slice_reported_and_enforced(vgpud_factory):
    """NVML and CUDA report a slice's total and free memory, and refuse allocations past it."""
    daemon = vgpud_factory("h100:20g,l4")
    code = """
import json, time, pynvml, torch
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
before = pynvml.nvmlDeviceGetMemoryInfo(handle)
free, total = torch.cuda.mem_get_info(0)
x = torch.empty(12 << 30, dtype=torch.uint8, device="cuda:0")
time.sleep(0.3)  # NVML's published answers are at most 100 ms old
after = pynvml.nvmlDeviceGetMemoryInfo(handle)
try:
    torch.empty(12 << 30, dtype=torch.uint8, device="cuda:0")
    oom = False
except torch.OutOfMemoryError:
    oom = True
print(json.dumps({"nvml_total": before.total, "nvml_free": before.free, "nvml_used_after": after.used,
                  "cuda_total": total, "cuda_free": free, "oom": oom,
                  "l4_total": torch.cuda.mem_get_info(1)[1]}))
"""
    report = run_json(code, daemon.env, timeout=180)
    assert report["nvml_total"] == report["nvml_free"] == SLICE
    assert report["cuda_total"] == report["cuda_free"] == SLICE
    assert report["nvml_used_after"] >= 12 << 30
    assert report["oom"]
    assert report["l4_total"] == parse("l4").gpus[0].profile.cuda_total


# ---- tokens ----------------------------------------------------------------------------------

def test_the_relay_knows_how_much_of_a_frame_is_still_coming():
    """The relay's pump waits only for bytes a frame's length promises, wherever the reads
    cut the stream (inside a header, inside a payload, across several frames)."""
    payloads = [bytes(range(200)) * 300, b"", b"{}"]
    frames = b"".join(pack_frame(0x4000 + k, payload, k) for k, payload in enumerate(payloads))
    spans, at = [], 0  # (where a frame starts, where its header ends, where it ends)
    for payload in payloads:
        spans.append((at, at + 12, at + 12 + len(payload)))
        at += 12 + len(payload)
    for cut in (1, 5, 11, 12, 13, 4096, 59_999, 60_012, 60_013, 60_024, 60_030, 60_037):
        ends = FrameEnds()
        ends.feed(memoryview(frames)[:cut])
        expected = next(((header - cut if cut < header else end - cut) for start, header, end in spans
                        if start < cut < end), 0)  # 60_012 and 60_024 fall between frames
        assert ends.coming == expected, cut
        ends.feed(memoryview(frames)[cut:])
        assert ends.coming == 0


def test_token_store(tmp_path):
    store = TokenStore(tmp_path / "state")
    token = store.create("team-a", gpus=[0], memory=20 << 30)
    assert store.verify(token) == Tenant("team-a", (0,), 20 << 30)
    assert store.verify(token + "x") is None and store.verify("") is None
    assert token not in store.path.read_text(), "only a digest is kept"
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert [t["name"] for t in store.tenants()] == ["team-a"]
    assert store.revoke("team-a") == 1 and store.verify(token) is None
    with pytest.raises(ValueError):
        store.create("no spaces")


# ---- a GPU host over TLS, and relays to it ---------------------------------------------------

@dataclass
class GpuHost:
    process: subprocess.Popen
    port: int
    ca: Path
    state: Path
    log: Path

    def token(self, tenant: str, *options: str) -> str:
        made = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "token", "create", "--tenant", tenant,
                               "--state-dir", str(self.state), *options], capture_output=True, text=True, check=True)
        return made.stdout.splitlines()[-1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start_gpu_host(folder: Path, gpus: str, port: int | None = None, prefix: tuple[str, ...] = (),
                   host: str = "127.0.0.1", like: GpuHost | None = None) -> GpuHost:
    """A vgpud serving simulated GPUs over TLS, as a GPU host would (trustme makes its CA);
    ``like``: the same certificate, tokens and port as an earlier one (a restart)."""
    folder.mkdir(parents=True, exist_ok=True)
    certs = like.ca.parent if like else folder
    if like is None:
        tls_files(folder, "localhost", "127.0.0.1", host)
    port = like.port if like else port or free_port()
    log = folder / "host.log"
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "vgpu.server.main", "--gpus", gpus, "--socket", str(folder / "host.sock"),
         *listen_options(certs, f"{host}:{port}")], stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    gpu_host = GpuHost(process, port, certs / "ca.pem", certs / "state", log)
    wait_for(lambda: "serving over TLS" in log.read_text() or process.poll() is not None, timeout=15)
    assert process.poll() is None, log.read_text()
    return gpu_host


def start_relay(folder: Path, gpu_host: GpuHost, token: str, host: str = "localhost",
                timeout: float = 3.0) -> Vgpud:
    folder.mkdir(parents=True, exist_ok=True)
    socket_path = folder / "relay.sock"
    socket_path_, pid, status = launcher.up_remote([f"{host}:{gpu_host.port}"], [token], gpu_host.ca, timeout,
                                                   socket_path=socket_path)
    process = psutil.Process(pid)
    return Vgpud(process, socket_path, socket_path.with_suffix(".log"))


@pytest.fixture(scope="module")
def gpu_host(tmp_path_factory):
    host = start_gpu_host(tmp_path_factory.mktemp("gpuhost"), "2xh100,l4")
    yield host
    host.stop()


def stop_relay(relay: Vgpud) -> None:
    """`vgpu down` for a relay: it stops whether or not its GPU host still answers."""
    assert launcher.down(relay.socket) == relay.process.pid
    relay.process.wait(10)


@pytest.fixture
def relays(tmp_path):
    started: list[Vgpud] = []
    yield started
    for relay in started:
        stop_relay(relay)


def vgpu_up_remote(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgpu.cli.main", "up", "--backend", "remote", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_up_remote_says_what_is_wrong(gpu_host, tmp_path):
    env = dict(os.environ, VGPU_SOCKET=str(tmp_path / "relay.sock"))
    token = gpu_host.token("checks")
    address = f"localhost:{gpu_host.port}"
    refused = vgpu_up_remote(env, "--connect", address, "--token", "vgpu_nope", "--ca", str(gpu_host.ca))
    assert refused.returncode == 1 and "refused the token" in refused.stderr
    untrusted = vgpu_up_remote(env, "--connect", address, "--token", token)
    assert untrusted.returncode == 1 and "not trusted" in untrusted.stderr and "--ca" in untrusted.stderr
    closed = vgpu_up_remote(env, "--connect", f"localhost:{free_port()}", "--token", token, "--ca", str(gpu_host.ca))
    assert closed.returncode == 1 and "cannot reach" in closed.stderr
    missing = vgpu_up_remote(env, "--connect", address)
    assert missing.returncode == 1 and "--token" in missing.stderr
    assert not (tmp_path / "relay.sock").exists(), "nothing was started"


TENANT_CLIENT = """
import json, os, time, pynvml, torch
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
x = torch.randn(1 << 20)
back = x.cuda().cpu()
a = torch.ones(512, 512, device="cuda")
b = a @ a
hold = torch.empty(8 << 30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
try:
    torch.empty(16 << 30, dtype=torch.uint8, device="cuda")
    oom = False
except torch.OutOfMemoryError:
    oom = True
time.sleep(0.2)
print(json.dumps({
    "pid": os.getpid(), "cuda_count": torch.cuda.device_count(), "nvml_count": pynvml.nvmlDeviceGetCount(),
    "name": torch.cuda.get_device_name(0), "uuid": pynvml.nvmlDeviceGetUUID(handle),
    "cuda_total": torch.cuda.mem_get_info()[1], "nvml_total": pynvml.nvmlDeviceGetMemoryInfo(handle).total,
    "nvml_used": pynvml.nvmlDeviceGetMemoryInfo(handle).used, "round_trip": torch.equal(back, x), "oom": oom,
    "processes": [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)],
}))
"""


def _half_a_record(host: GpuHost) -> socket.socket:
    """A TLS connection to the GPU host whose first record stops half-way: the handshake is
    done, then a frame header's record is sent without its second half."""
    raw = socket.create_connection(("127.0.0.1", host.port), timeout=5)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(host.ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(1 << 16))
    raw.sendall(outgoing.read())
    tls.write(pack_frame(0x0001, bytes(1000)))
    record = outgoing.read()
    raw.sendall(record[:len(record) // 2])
    return raw


def test_a_peer_stopped_inside_a_tls_record_holds_up_nobody(gpu_host):
    """Anyone who can reach the port can finish a TLS handshake; one that then stops inside a
    record (or sends it a byte at a time) must not stall the GPU host for its tenants."""
    stalled = [_half_a_record(gpu_host) for _ in range(3)]
    start = time.monotonic()
    for _ in range(5):
        assert check(("localhost", gpu_host.port), gpu_host.token("team-a"), gpu_host.ca)["gpus"]
    assert time.monotonic() - start < 3
    for sock in stalled:
        sock.close()


def test_a_tenant_through_a_relay(gpu_host, relays, tmp_path):
    """A tenant limited to the L4 and 20 GiB... of an L4's 22 GiB: it sees that GPU alone, its
    quota as the total, its own process, and allocations past the quota fail; data and a
    matmul travel through the relay."""
    token = gpu_host.token("team-a", "--gpus", "2", "--memory", "20g")
    relay = start_relay(tmp_path / "a", gpu_host, token)
    relays.append(relay)
    report = run_json(TENANT_CLIENT, relay.env, timeout=180)
    l4 = parse("2xh100,l4").gpus[2]
    assert report["cuda_count"] == report["nvml_count"] == 1
    assert report["name"] == l4.profile.name and report["uuid"] == l4.uuid
    assert report["cuda_total"] == report["nvml_total"] == 20 << 30
    assert report["nvml_used"] >= 8 << 30 and report["oom"] and report["round_trip"]
    assert report["processes"] == [report["pid"]]
    launches = relay.control("launches", pid=report["pid"])["launches"]
    assert any("gemm" in x["kernel"] for x in launches)
    shown = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "status"], env=relay.env | {"COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60)
    assert f"relays to the GPU host localhost:{gpu_host.port}" in shown.stdout, shown.stdout + shown.stderr


def test_tenants_are_isolated(gpu_host, relays, tmp_path):
    """Two tenants on the same GPU: each sees its own processes and memory only, and a tenant
    cannot change the GPU host (faults, stop)."""
    one = start_relay(tmp_path / "one", gpu_host, gpu_host.token("one", "--gpus", "0", "--memory", "30g"))
    two = start_relay(tmp_path / "two", gpu_host, gpu_host.token("two", "--gpus", "0,1"))
    relays.extend([one, two])
    holder = subprocess.Popen([sys.executable, "-c", "import torch, time; x = torch.empty(4 << 30, dtype=torch.uint8,"
                               " device='cuda'); torch.cuda.synchronize(); print('held', flush=True); time.sleep(60)"],
                              env=one.env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        seen_by_two = two.control("status")
        assert [s["tenant"] for s in seen_by_two["sessions"]] == ["two"]
        assert len(seen_by_two["gpus"]) == 2
        seen_by_one = one.control("status")
        assert holder.pid in [s["pid"] for s in seen_by_one["sessions"]]
        assert seen_by_one["gpus"][0]["memory_total"] == 30 << 30
        assert seen_by_one["gpus"][0]["memory_used"] >= 4 << 30
        with pytest.raises(ControlFailed, match="for the GPU host's own tools"):
            with Client(two.socket) as client:
                client.control("fault", gpu=0, kind="xid", xid=79)
        code = "import pynvml; pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(0); " \
               "print([p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)])"
        result = run_python(code, two.env)
        assert result.stdout.strip() == "[]", "team two does not see team one's process"
    finally:
        holder.kill()
        holder.wait()


# ---- failures: a cut network, a restarted GPU host ------------------------------------------

CLIENTS = Path(__file__).parent / "clients"


@pytest.fixture
def netns(tmp_path):
    """A network namespace standing for the GPU host, joined to this one by a veth pair:
    10.77.N.2 there, 10.77.N.1 here; the link can be cut."""
    if os.getuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = os.getpid() % 200 + 20
    name, here, there = f"vgpu-host-{tag}", f"vgh{tag}", f"vgg{tag}"
    commands = [["ip", "netns", "add", name], ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
                ["ip", "link", "set", there, "netns", name], ["ip", "addr", "add", f"10.77.{tag}.1/24", "dev", here],
                ["ip", "link", "set", here, "up"],
                ["ip", "netns", "exec", name, "ip", "addr", "add", f"10.77.{tag}.2/24", "dev", there],
                ["ip", "netns", "exec", name, "ip", "link", "set", there, "up"],
                ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"cannot make a network namespace here: {error.stderr.decode().strip()}")
    yield {"name": name, "link": here, "address": f"10.77.{tag}.2"}
    subprocess.run(["ip", "link", "del", here], capture_output=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def client_lines(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_a_network_cut_gives_errors_within_the_timeout(netns, tmp_path):
    """The GPU host in its own network namespace; mid-session the link goes down. Work sent
    before a successful synchronisation is all there; afterwards CUDA and NVML calls fail
    within the library's bound (VGPU_TIMEOUT_MS, here 1.5 s) and nothing hangs."""
    gpu_host = start_gpu_host(tmp_path / "host", "h100", prefix=("ip", "netns", "exec", netns["name"]),
                              host=netns["address"])
    try:
        relay = start_relay(tmp_path / "relay", gpu_host, gpu_host.token("cut"), host=netns["address"], timeout=2)
        env = relay.env | {"VGPU_TIMEOUT_MS": "1500"}
        client = subprocess.Popen([sys.executable, str(CLIENTS / "remote_calls.py"), "500", "20"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = json.loads(client.stdout.readline())
        assert first == {"launched": 500, "sync": 0}
        assert relay.control("launches")["counts"] == {str(client.pid): 500}, "nothing sent before the sync is lost"
        time.sleep(0.5)
        cut_at = time.monotonic()
        subprocess.run(["ip", "link", "set", netns["link"], "down"], check=True)
        rounds = client_lines(client)
        ended = time.monotonic() - cut_at
        before = [r for r in rounds if r["cuda"] == 0]
        after = [r for r in rounds if r["cuda"] != 0]
        assert before and after, rounds
        assert all(r["nvml"] == 0 for r in before)
        assert after[-1]["cuda"] in (46, 999, 3), after  # DEVICE_UNAVAILABLE (or the driver's lost/unknown codes)
        assert after[-1]["nvml"] != 0
        assert ended < 8, f"the client took {ended:.1f} s to see the cut"
        with Client(relay.socket) as tool:
            with pytest.raises(ControlFailed, match="GPU host 10.77"):
                tool.control("status")
        stop_relay(relay)
    finally:
        gpu_host.stop()


def test_a_restarted_gpu_host_is_a_lost_device(tmp_path):
    """A GPU host that restarts (same address, certificate and tokens) is a lost device to the
    processes that used it, and a new process works again."""
    first = start_gpu_host(tmp_path / "host", "h100")
    token = first.token("restart")
    relay = start_relay(tmp_path / "relay", first, token)
    try:
        client = subprocess.Popen([sys.executable, str(CLIENTS / "remote_calls.py"), "10", "20"], env=relay.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert json.loads(client.stdout.readline())["sync"] == 0
        time.sleep(0.3)
        first.stop()
        again = start_gpu_host(tmp_path / "host2", "h100", like=first)
        try:
            rounds = client_lines(client)
            assert rounds[-1]["cuda"] != 0, "the old session's device is gone, not silently replaced"
            fresh = run_python("import torch; print(torch.cuda.device_count())", relay.env, timeout=120)
            assert fresh.stdout.strip() == "1", fresh.stderr  # a new process works again
        finally:
            again.stop()
    finally:
        stop_relay(relay)


def test_a_listening_vgpud_stops_cleanly(tmp_path):
    host = start_gpu_host(tmp_path / "host", "h100")
    host.process.terminate()
    assert host.process.wait(10) == 0, host.log.read_text()
    assert "Traceback" not in host.log.read_text()
