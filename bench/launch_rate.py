"""Asynchronous kernel launches per second through libvgpu-cuda.so, recorded by vgpud,
against empty sends over the same socket in the same run:

- launches: a C client (bench/clients/launch_rate.c) launches an empty kernel N times with
  cuLaunchKernel and then calls cuCtxSynchronize, which returns once vgpud has timed and
  recorded every launch;
- floor: the same client sends N frames of a launch's size to the same vgpud socket, without
  waiting (pings vgpud drops), then one ping with a reply.

    python bench/launch_rate.py [--launches N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from harness import pin_server, pinned_vgpud

HERE = Path(__file__).resolve().parent
#: a launch record without parameters: the frame the floor sends has the same size
LAUNCH_RECORD_BYTES = 60


def build() -> Path:
    binary = Path(tempfile.mkdtemp()) / "launch_rate"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "clients" / "launch_rate.c"), "-ldl"], check=True)
    return binary


def timed(command: list[str], env: dict[str, str]) -> float:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    binary = build()
    with pinned_vgpud("h100") as daemon:
        pin_server(daemon.process.pid)
        env = daemon.env
        launches = [timed([str(binary), "launches", str(args.launches)], env) for _ in range(args.repeats)]
        floor = [timed([str(binary), "floor", str(args.launches), str(daemon.socket), str(LAUNCH_RECORD_BYTES)], env)
                 for _ in range(args.repeats)]
        recorded = daemon.control("launches", limit=1)
    launch_rate = args.launches / statistics.median(launches)
    floor_rate = args.launches / statistics.median(floor)
    print(json.dumps({
        "launches_per_second": round(launch_rate),
        "floor_empty_sends_per_second": round(floor_rate),
        "ratio": round(launch_rate / floor_rate, 2),
        "target_per_second": 250_000,
        "runs_s": {"launches": [round(x, 3) for x in launches], "floor": [round(x, 3) for x in floor]},
        "last_recorded": recorded["launches"][-1]["kernel"] if recorded["launches"] else None,
    }, indent=2))


if __name__ == "__main__":
    main()
