"""No daemon, a dying or hung daemon, malformed frames, mismatched libraries, fork: nothing hangs."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.conftest import run_python
from vgpu import launcher
from vgpu.wire import protocol
from vgpu.wire.client import Client


def test_no_daemon_means_driver_not_loaded(tmp_path):
    env = launcher.client_environment(tmp_path / "nobody.sock")
    result = run_python(
        "import pynvml as n\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        n.nvmlInit()\n"
        "    except n.NVMLError as e:\n"
        "        print(e.value)\n", env)
    assert result.stdout.split() == ["9", "9", "9"]  # NVML_ERROR_DRIVER_NOT_LOADED
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, "the hint is printed once"
    assert str(tmp_path / "nobody.sock") in lines[0] and "vgpu up" in lines[0]


DYING = """
import sys, time, pynvml as n
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
n.nvmlDeviceGetTemperature(h, 0)  # now published: later calls may be answered from shared memory
print("ready", flush=True)
sys.stdin.readline()
time.sleep(0.3)  # past the 250 ms a published answer stays usable
start = time.monotonic()
try:
    n.nvmlDeviceGetTemperature(h, 0)
    print("answered")
except n.NVMLError as e:
    print(e.value, round(time.monotonic() - start, 3))
try:
    n.nvmlDeviceGetCount()
except n.NVMLError as e:
    print(e.value)
"""


def _client_against(daemon, env_extra=None):
    env = {**daemon.env, **(env_extra or {})}
    child = subprocess.Popen([sys.executable, "-c", DYING], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_daemon_killed_mid_session(vgpud_factory):
    daemon = vgpud_factory("h100")
    child = _client_against(daemon)
    daemon.process.kill()
    daemon.process.wait()
    out, err = child.communicate("go\n", timeout=20)
    code, elapsed, again = out.split()
    assert code == "15" and float(elapsed) < 1.0  # NVML_ERROR_GPU_IS_LOST, at once
    assert again == "15"
    assert "lost vgpud" in err


def test_hung_daemon_times_out(vgpud_factory):
    daemon = vgpud_factory("h100")
    child = _client_against(daemon, {"VGPU_TIMEOUT_MS": "500"})
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        out, _ = child.communicate("go\n", timeout=20)
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    code, elapsed, _ = out.split()
    assert code == "15" and 0.4 < float(elapsed) < 1.5


def _raw_connection(path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\n\r\n",                                       # not a frame at all
    protocol.pack_frame(protocol.OP_PING, b"hello"),                 # no handshake first
    struct.pack("<IHHI", 0xFFFFFFF0, protocol.OP_HELLO, 0, 1),       # absurd length
    protocol.pack_frame(protocol.OP_HELLO, b"VGPU"),                 # truncated handshake
])
def test_malformed_frames_close_only_their_connection(vgpud, garbage):
    bystander = vgpud.client()
    sock = _raw_connection(vgpud.socket)
    sock.sendall(garbage)
    sock.shutdown(socket.SHUT_WR)
    try:
        rest = sock.recv(1 << 16)
    except ConnectionResetError:  # closed with our bytes unread: a reset, which is a close too
        rest = b""
    assert rest == b"", "vgpud closes the offending connection"
    sock.close()
    assert bystander.request(protocol.OP_PING, b"still here") == b"still here"
    assert vgpud.control("status")["gpus"]
    bystander.close()


def test_a_client_stopped_inside_a_bulk_frame_holds_up_nobody(vgpud):
    """A client that stops half-way through a 32 MiB frame (a debugger, Ctrl-Z in the middle of
    a large copy) leaves vgpud serving everyone else; the frame is taken up where it stopped."""
    bystander = vgpud.client()
    sock = _raw_connection(vgpud.socket)
    sock.sendall(struct.pack("<IHHI", 32 << 20, protocol.OP_HELLO, 0, 1) + bytes(3 << 20))
    start = time.monotonic()
    assert bystander.request(protocol.OP_PING, b"still here") == b"still here"
    assert vgpud.control("status")["gpus"]
    assert time.monotonic() - start < 2
    sock.sendall(bytes((32 << 20) - (3 << 20)))  # the rest: a handshake of zeros, refused
    sock.settimeout(10)
    answer = b""
    while chunk := sock.recv(1 << 16):  # the refusal, then the end of the connection
        answer += chunk
    assert b"protocol version 0 not served" in answer
    sock.close()
    bystander.close()


def test_a_client_slow_to_take_a_large_reply_holds_up_nobody(vgpud):
    """A 32 MiB reply that its client does not read waits in its connection while vgpud
    serves the others; read later, slowly, it arrives whole."""
    slow = vgpud.client()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = os.urandom(1 << 20) * 32
    slow.send_raw(protocol.pack_frame(protocol.OP_PING, payload, 7))
    bystander = vgpud.client()
    start = time.monotonic()
    for _ in range(20):
        assert bystander.request(protocol.OP_PING, b"still here") == b"still here"
    assert time.monotonic() - start < 2
    time.sleep(1)
    answer = bytearray()
    while len(answer) < 12 + len(payload):
        answer += slow.sock.recv(1 << 20)
        if len(answer) < 1 << 20:
            time.sleep(0.2)  # the first MiB taken slowly
    assert protocol.HEADER.unpack_from(answer) == (len(payload), protocol.OP_PING, protocol.FLAG_REPLY, 7)
    assert answer[12:] == payload
    slow.close()
    bystander.close()


def test_malformed_payloads_after_handshake(vgpud):
    from vgpu.api.manifest import load

    api = load("nvml")
    get_name = api.function("nvmlDeviceGetName").op
    for bad in (b"", b"\x01" * 3, b"\x00" * 200):
        client = Client(vgpud.socket, api="nvml", digest=api.digest)
        with pytest.raises((ConnectionError, protocol.ProtocolError, EOFError)):
            client.request(get_name, bad)
        client.close()
    client = Client(vgpud.socket, api="control")
    with pytest.raises((ConnectionError, protocol.ProtocolError)):
        client.request(0x0FFF, b"")  # an op nobody knows
    with pytest.raises((ConnectionError, protocol.ProtocolError)):
        Client(vgpud.socket).request(protocol.OP_CONTROL, b"{not json")
    assert vgpud.control("status")["gpus"]


def test_mismatched_manifest_is_refused(vgpud):
    with pytest.raises(ConnectionRefusedError, match="manifest"):
        Client(vgpud.socket, api="nvml", digest="0" * 64)
    with pytest.raises(ConnectionRefusedError, match="unknown API"):
        Client(vgpud.socket, api="opencl")


def test_unimplemented_calls_are_logged_once_by_name(vgpud):
    env = {**vgpud.env, "VGPU_LOG": "info"}
    result = run_python(
        "import pynvml as n\n"
        "n.nvmlInit()\n"
        "h = n.nvmlDeviceGetHandleByIndex(0)\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        n.nvmlDeviceGetSamples(h, 0, 0)\n"
        "    except n.NVMLError_NotSupported:\n"
        "        print('not supported')\n", env)
    assert result.stdout.split("\n").count("not supported") == 3
    assert result.stderr.count("nvmlDeviceGetSamples is not implemented") == 1


def test_fork_and_threads(vgpud):
    result = run_python(
        "import os, threading, pynvml as n\n"
        "n.nvmlInit()\n"
        "names = []\n"
        "threads = [threading.Thread(target=lambda i=i: names.append(n.nvmlDeviceGetName(n.nvmlDeviceGetHandleByIndex(i % 4)))) for i in range(16)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if n.nvmlDeviceGetCount() == 4 else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(len(names), os.waitstatus_to_exitcode(status), n.nvmlDeviceGetCount())\n", vgpud.env)
    assert result.stdout.split() == ["16", "0", "4"], result.stderr


def test_sessions_end_with_their_process(vgpud):
    before = {s["pid"] for s in vgpud.control("status")["sessions"]}
    result = run_python("import pynvml as n\nn.nvmlInit()\nn.nvmlDeviceGetCount()\nimport os; print(os.getpid())\n",
                        vgpud.env)
    pid = int(result.stdout)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid in {s["pid"] for s in vgpud.control("status")["sessions"]}:
        time.sleep(0.05)
    assert pid not in {s["pid"] for s in vgpud.control("status")["sessions"]} and pid not in before


RESTART = """
import sys, time, pynvml as n
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
first = n.nvmlDeviceGetName(h), n.nvmlDeviceGetTemperature(h, 0)
print("ready", flush=True)
sys.stdin.readline()
time.sleep(0.3)
try:
    n.nvmlDeviceGetTemperature(h, 0)
except n.NVMLError_GpuIsLost:
    print("lost")
n.nvmlShutdown()
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)
print(n.nvmlDeviceGetName(h), n.nvmlDeviceGetCount())
"""


def test_a_restarted_daemon_is_found_again_after_init(tmp_path):
    from tests.conftest import start_vgpud

    first = start_vgpud("h100", tmp_path)
    second = None
    child = subprocess.Popen([sys.executable, "-c", RESTART], env=first.env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        first.process.kill()
        first.process.wait()
        second = start_vgpud("2xl4", tmp_path)  # same socket, a new published-answers file
        out, err = child.communicate("go\n", timeout=30)
        assert out.splitlines() == ["lost", "NVIDIA L4 2"], err
    finally:
        child.kill()
        for daemon in filter(None, (first, second)):
            daemon.stop()


def test_random_payloads_never_take_vgpud_down(vgpud):
    """Every implemented NVML op, fed truncated, padded and random payloads."""
    import random

    from vgpu.api.manifest import load

    api = load("nvml")
    rng = random.Random(1234)
    client = Client(vgpud.socket, api="nvml", digest=api.digest)
    ops = [f.op for f in api.functions if client.bitmap[(f.op - 0x1000) // 8] >> ((f.op - 0x1000) % 8) & 1]
    assert len(ops) > 100
    answered = closed = 0
    for _ in range(1500):
        function = api.by_op(rng.choice(ops))
        op = function.op
        payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 5, 9, 13, 17, 24, 40, 64, 200])))
        if function.params and function.params[0].handle == "nvmlDevice_t" and rng.random() < 0.8:
            payload = struct.pack("<Q", rng.randint(1, 4)) + payload  # a real GPU, random arguments
        try:
            reply = client.request(op, payload)
            assert len(reply) >= 4
            answered += 1
        except (ConnectionError, protocol.ProtocolError, EOFError, OSError):
            closed += 1
            client.close()
            client = Client(vgpud.socket, api="nvml", digest=api.digest)
    client.close()
    assert answered and closed
    assert vgpud.control("status")["gpus"], "vgpud still serves"
    assert vgpud.process.poll() is None
    log = vgpud.log.read_text()
    assert "failed in vgpud" not in log and "internal error" not in log, log


def test_malformed_module_and_launch_frames_cost_only_their_connection(vgpud):
    """CUDA's own ops (OP_MODULE, OP_LAUNCH, with and without a reply), fed truncated and random
    payloads and fat binaries with lying sizes: vgpud answers or closes that connection, and
    logs no internal error."""
    import random

    from vgpu.api.manifest import load
    from vgpu.images.fatbin import HEADER

    api = load("cuda")
    rng = random.Random(99)
    client = Client(vgpud.socket, api="cuda", digest=api.digest)
    context = struct.pack("<Q", 1 << 32)
    liar = HEADER.pack(0xBA55ED50, 1, 16, 1 << 40)  # claims a terabyte
    answered = closed = 0
    for round_ in range(300):
        op = rng.choice([protocol.OP_MODULE, protocol.OP_LAUNCH])
        body = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 3, 12, 59, 60, 61, 90, 300])))
        if op == protocol.OP_MODULE and round_ % 3 == 0:
            body = context + struct.pack("<I", rng.getrandbits(1)) + liar + body
        try:
            if round_ % 4 == 0:
                client.sock.sendall(protocol.pack_frame(op, body, flags=protocol.FLAG_NO_REPLY))
                client.request(protocol.OP_PING, b"x")
            else:
                assert len(client.request(op, body)) >= 4
            answered += 1
        except (ConnectionError, protocol.ProtocolError, EOFError, OSError):
            closed += 1
            client.close()
            client = Client(vgpud.socket, api="cuda", digest=api.digest)
    client.close()
    assert answered and closed
    assert vgpud.process.poll() is None
    assert "internal error" not in vgpud.log.read_text()
