"""The ``vgpud`` command."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from vgpu.device import gpuset
from vgpu.server.daemon import Daemon
from vgpu.server.state import DaemonState
from vgpu.wire.protocol import default_socket_path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gpus", default="h100", show_default=True, help="GPU set: 2xh100, h100,l4, or a TOML file.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
              help="Unix socket to listen on (default: $VGPU_SOCKET or /tmp/vgpu-UID/vgpud.sock).")
@click.option("--backend", type=click.Choice(["sim"]), default="sim", show_default=True,
              help="Where the work runs; sim simulates the GPUs.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
def main(gpus: str, socket_path: Path | None, backend: str, log_level: str) -> None:
    """Serve simulated NVIDIA GPUs to the vgpu libraries."""
    logging.basicConfig(level=log_level.upper(), format="vgpud[%(process)d] %(levelname)s %(message)s")
    try:
        gpu_set = gpuset.parse(gpus)
    except (KeyError, ValueError) as error:
        raise click.BadParameter(str(error.args[0]), param_hint="--gpus") from None
    daemon = Daemon(DaemonState(gpu_set, backend), socket_path or default_socket_path())
    try:
        daemon.bind()
    except (RuntimeError, OSError) as error:
        click.echo(f"vgpud: {error}", err=True)
        sys.exit(1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: daemon.stop())
    daemon.serve_forever()


if __name__ == "__main__":
    main()
