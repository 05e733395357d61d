"""The ``vgpud`` command."""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from pathlib import Path

import click

from vgpu.device import gpuset
from vgpu.device.gpu import Gpu
from vgpu.remote.relay import DEFAULT_TIMEOUT_S, Relay, RemoteError, given_tokens, upstreams
from vgpu.remote.tls import parse_address
from vgpu.remote.tokens import TokenStore, default_state_dir
from vgpu.server.daemon import Daemon, NetworkSettings
from vgpu.server.state import DaemonState
from vgpu.wire.protocol import default_socket_path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gpus", default="h100", show_default=True,
              help="GPU set: 2xh100, h100,l4, h100:20g (a slice), or a TOML file.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
              help="Unix socket to listen on (default: $VGPU_SOCKET or /tmp/vgpu-UID/vgpud.sock).")
@click.option("--backend", type=click.Choice(["sim", "cuda", "remote"]), default="sim", show_default=True,
              help="Where the work runs: sim simulates the GPUs; cuda runs CUDA calls on this host's real GPUs "
                   "(NVML stays simulated from --gpus); remote forwards to a GPU host's vgpud (--connect).")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Also serve clients on other hosts over TLS (needs --tls-cert, --tls-key and tokens).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the token store lives (default: $VGPU_STATE_DIR, /var/lib/vgpu for root, "
                   "~/.local/state/vgpu).")
@click.option("--connect", multiple=True, metavar="HOST:PORT",
              help="The GPU host (backend remote); again for each further host, joined into one device list.")
@click.option("--token", multiple=True, help="The tenant's token (backend remote): one for every host, or one per "
                                            "--connect in order ($VGPU_TOKEN: comma-separated).")
@click.option("--pci-domain", type=click.IntRange(0, 0xFFFF), default=0, show_default=True,
              help="The simulated GPUs' PCI domain; simulators one relay joins need different ones (their "
                   "GPUs' UUIDs differ then too).")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The CA that signed the GPU host's certificate (backend remote; default: the system's).")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds before a silent peer counts as gone (network connections).")
@click.option("--compute", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="Run kernels whose modules carry PTX (off: launches are recorded and timed only).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
def main(gpus: str, socket_path: Path | None, backend: str, listen: str | None, tls_cert: Path | None,
         tls_key: Path | None, state_dir: Path | None, connect: tuple[str, ...], token: tuple[str, ...],
         pci_domain: int, ca: Path | None, timeout: float, compute: str, log_level: str) -> None:
    """Serve NVIDIA GPUs to the vgpu libraries: simulated ones, or a GPU host's over the network."""
    logging.basicConfig(level=log_level.upper(), format="vgpud[%(process)d] %(levelname)s %(message)s")
    socket_path = socket_path or default_socket_path()
    if backend == "remote":
        server = _relay(socket_path, connect, token, ca, timeout)
    else:
        server = _daemon(gpus, backend, socket_path, listen, tls_cert, tls_key, state_dir, timeout, pci_domain,
                         compute == "on")
    try:
        server.bind()
    except (RuntimeError, OSError, RemoteError) as error:
        click.echo(f"vgpud: {error}", err=True)
        sys.exit(1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: server.stop())
    server.serve_forever()


def _daemon(gpus: str, backend: str, socket_path: Path, listen: str | None, cert: Path | None, key: Path | None,
            state_dir: Path | None, timeout: float, pci_domain: int, compute: bool = True) -> Daemon:
    try:
        gpu_set = gpuset.parse(gpus, pci_domain)
    except (KeyError, ValueError) as error:
        raise click.BadParameter(str(error.args[0]), param_hint="--gpus") from None
    raise_file_limit()
    make_gpu = Gpu
    if backend == "cuda":  # NVML's GPUs are the real ones (their UUIDs, buses and readings), with --gpus's profile
        from vgpu.device.measured import MeasuredGpu
        from vgpu.server.cuda_real import real_devices

        try:
            gpu_set = gpuset.with_identities(gpu_set, real_devices())
        except RuntimeError as error:
            raise click.UsageError(str(error)) from None
        make_gpu = MeasuredGpu
    network = None
    if listen is not None:
        if cert is None or key is None:
            raise click.UsageError("--listen serves other hosts and needs TLS: give --tls-cert and --tls-key")
        try:
            address = parse_address(listen, "0.0.0.0")
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--listen") from None
        network = NetworkSettings(address, cert, key, TokenStore(state_dir or default_state_dir()), timeout)
    if state_dir is not None:  # a system vgpud keeps compiled kernels with its state
        os.environ.setdefault("VGPU_COMPUTE_CACHE", str(state_dir / "compute"))
    state = DaemonState(gpu_set, backend, make_gpu)
    state.compute = compute and backend == "sim"  # a real GPU computes for itself
    return Daemon(state, socket_path, network)


def raise_file_limit() -> None:
    """Each device allocation holds a memfd: let vgpud open as many as the hard limit allows
    (past it, allocations fail with CUDA_ERROR_OUT_OF_MEMORY)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _relay(socket_path: Path, connect: tuple[str, ...], token: tuple[str, ...], ca: Path | None,
           timeout: float) -> Relay:
    tokens = given_tokens(token)
    if not connect or not tokens:
        raise click.UsageError("backend remote needs --connect HOST:PORT and --token (from `vgpu token create` "
                               "on the GPU host)")
    try:
        return Relay(socket_path, upstreams(connect, tokens), ca, timeout)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--connect/--token") from None


if __name__ == "__main__":
    main()
