"""nvidia-smi's outputs from a snapshot: the default table, ``--query-gpu`` CSV and ``-q``."""

from __future__ import annotations

import time
from typing import Any, Callable

from vgpu.smi.snapshot import MIB, GpuSnapshot, Snapshot

NA = "N/A"
SIM_NOTE = "vgpu: simulated GPUs; kernels are validated and timed, not computed"


def sim_note(compute: dict | None) -> str:
    """What the simulated GPUs do with kernels, with vgpud's counts (its status's "compute")."""
    if not compute or not compute.get("enabled"):
        return SIM_NOTE
    counts = compute.get("launches", {})
    return (f"vgpu: simulated GPUs; kernels with PTX compute on the host's CPUs "
            f"({counts.get('computed', 0)} launches computed, {counts.get('not computed', 0)} not: `vgpu launches`)")
REAL_NOTE = "vgpu: real GPUs behind vgpud's cuda backend; kernels run on them"


def _mib(value: int | None) -> str:
    return NA if value is None else f"{value // MIB}MiB"


def _cuda(version: int | None) -> str:
    return NA if version is None else f"{version // 1000}.{version % 1000 // 10}"


def _watts(mw: int | None) -> str:
    return NA if mw is None else f"{mw // 1000}W"


WIDTH = 91  # the default table's width, as nvidia-smi prints it


def _boxed(text: str) -> str:
    return "|" + text.ljust(WIDTH - 2) + "|"


def table(snap: Snapshot, now: float | None = None, note: str = SIM_NOTE) -> str:
    width = WIDTH
    rule = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    lines = [time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(now)),
             "+" + "-" * (width - 2) + "+",
             _boxed(f" NVIDIA-SMI (vgpu)   Driver Version: {snap.driver_version or NA}"
                    f"      CUDA Version: {_cuda(snap.cuda_version)}"),
             rule,
             "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
             "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
             "|                                         |                        |               MIG M. |",
             "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|"]
    for gpu in snap.gpus:
        if gpu.lost:
            lines.append(_boxed(f" {gpu.index:3d}  Unable to determine the device handle: GPU is lost"))
            lines.append(rule)
            continue
        persistence = NA if gpu.persistence_mode is None else ("On" if gpu.persistence_mode else "Off")
        display = NA if gpu.display_active is None else ("On" if gpu.display_active else "Off")
        ecc = NA if gpu.ecc_uncorrected_volatile is None else str(gpu.ecc_uncorrected_volatile)
        fan = NA if gpu.fan_speed is None else f"{gpu.fan_speed}%"
        temp = NA if gpu.temperature is None else f"{gpu.temperature}C"
        perf = NA if gpu.pstate is None else f"P{gpu.pstate}"
        util = NA if gpu.utilization_gpu is None else f"{gpu.utilization_gpu}%"
        mig = NA if gpu.mig_mode is None else ("Enabled" if gpu.mig_mode else "Disabled")
        name = (gpu.name or NA)[:28]
        lines.append(f"| {gpu.index:3d}  {name:<28}{persistence:>5}  | {gpu.pci_bus_id or NA:>16} {display:>5} |"
                     f" {ecc:>20} |")
        power = f"{_watts(gpu.power_draw_mw):>5} / {_watts(gpu.power_limit_mw):>5}"[:21]
        memory = f"{_mib(gpu.memory_used):>9} / {_mib(gpu.memory_total):>9}"
        lines.append(f"| {fan:>4}  {temp:>4}  {perf:>4}  {power:>21} | {memory:>22} | {util:>7}  {'Default':>11} |")
        lines.append(f"|{'':41}|{'':24}| {mig:>20} |")
        lines.append(rule)
    lines += ["", "+" + "-" * (width - 2) + "+",
              _boxed(" Processes:"),
              _boxed("  GPU   GI   CI              PID   Type   Process name".ljust(78) + "GPU Memory "),
              _boxed("        ID   ID".ljust(78) + "Usage      "),
              "|" + "=" * (width - 2) + "|"]
    procs = [(gpu.index, p) for gpu in snap.gpus for p in gpu.processes]
    if not procs:
        lines.append(_boxed("  No running processes found"))
    for index, proc in procs:
        name = (proc.name or NA)
        name = name if len(name) <= 32 else "..." + name[-29:]
        lines.append(_boxed(f" {index:4d}   {NA:>3}  {NA:>3}  {proc.pid:>15}  {proc.type:>5}   {name:<32}"
                            f"  {_mib(proc.used_memory):>11} "))
    lines += ["+" + "-" * (width - 2) + "+", note]
    return "\n".join(lines)


# --query-gpu fields: name -> (header unit, reader returning (value, unit))
def _with(unit: str, value: Any) -> tuple[Any, str]:
    return value, unit


def _mib_value(value: int | None) -> tuple[Any, str]:
    return (None if value is None else value // MIB), "MiB"


def _watts_value(mw: int | None) -> tuple[Any, str]:
    return (None if mw is None else f"{mw / 1000:.2f}"), "W"


FIELDS: dict[str, tuple[str, Callable[[Snapshot, GpuSnapshot], tuple[Any, str]]]] = {
    "index": ("", lambda s, g: (g.index, "")),
    "count": ("", lambda s, g: (len(s.gpus), "")),
    "name": ("", lambda s, g: (g.name, "")),
    "uuid": ("", lambda s, g: (g.uuid, "")),
    "serial": ("", lambda s, g: (g.serial, "")),
    "pci.bus_id": ("", lambda s, g: (g.pci_bus_id, "")),
    "driver_version": ("", lambda s, g: (s.driver_version, "")),
    "compute_cap": ("", lambda s, g: (g.compute_capability, "")),
    "pstate": ("", lambda s, g: (None if g.pstate is None else f"P{g.pstate}", "")),
    "memory.total": ("MiB", lambda s, g: _mib_value(g.memory_total)),
    "memory.reserved": ("MiB", lambda s, g: _mib_value(g.memory_reserved)),
    "memory.used": ("MiB", lambda s, g: _mib_value(g.memory_used)),
    "memory.free": ("MiB", lambda s, g: _mib_value(g.memory_free)),
    "utilization.gpu": ("%", lambda s, g: _with("%", g.utilization_gpu)),
    "utilization.memory": ("%", lambda s, g: _with("%", g.utilization_memory)),
    "temperature.gpu": ("", lambda s, g: (g.temperature, "")),
    "fan.speed": ("%", lambda s, g: _with("%", g.fan_speed)),
    "power.draw": ("W", lambda s, g: _watts_value(g.power_draw_mw)),
    "power.limit": ("W", lambda s, g: _watts_value(g.power_limit_mw)),
    "clocks.sm": ("MHz", lambda s, g: _with("MHz", g.clock_sm)),
    "clocks.mem": ("MHz", lambda s, g: _with("MHz", g.clock_mem)),
    "clocks.max.sm": ("MHz", lambda s, g: _with("MHz", g.clock_max_sm)),
    "clocks.max.mem": ("MHz", lambda s, g: _with("MHz", g.clock_max_mem)),
    "ecc.errors.uncorrected.volatile.total": ("", lambda s, g: (g.ecc_uncorrected_volatile, "")),
}
ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid", "gpu_serial": "serial", "gpu_bus_id": "pci.bus_id",
           "temperature": "temperature.gpu"}


def query_csv(snap: Snapshot, fields: list[str], header: bool = True, units: bool = True) -> str:
    """``--query-gpu=FIELDS --format=csv[,noheader][,nounits]``."""
    names = [ALIASES.get(f.strip(), f.strip()) for f in fields if f.strip()]
    unknown = [f for f in names if f not in FIELDS]
    if unknown:
        raise ValueError(f"field {unknown[0]!r} is not a valid field to query; valid: {', '.join(FIELDS)}")
    rows = []
    if header:
        rows.append(", ".join(f"{n} [{FIELDS[n][0]}]" if FIELDS[n][0] and units else n for n in names))
    for gpu in snap.gpus:
        cells = []
        for name in names:
            value, unit = FIELDS[name][1](snap, gpu)
            if value is None:
                cells.append("[N/A]")
            else:
                cells.append(f"{value} {unit}" if unit and units else str(value))
        rows.append(", ".join(cells))
    return "\n".join(rows)


def _unit(value: Any, suffix: str) -> str | None:
    """A reading with its unit, or None (printed N/A) when there is no reading."""
    return None if value is None else f"{value}{suffix}"


def query_text(snap: Snapshot, now: float | None = None, note: str = SIM_NOTE) -> str:
    """``-q``: the long per-GPU report."""
    out = ["", "==============NVSMI LOG==============", "",
           f"{'Timestamp':<38}: {time.strftime('%a %b %d %H:%M:%S %Y', time.localtime(now))}",
           f"{'Driver Version':<38}: {snap.driver_version or NA}",
           f"{'CUDA Version':<38}: {_cuda(snap.cuda_version)}", "",
           f"{'Attached GPUs':<38}: {len(snap.gpus)}"]

    def item(depth: int, key: str, value: Any = "") -> None:
        pad = "    " * depth
        out.append(f"{pad}{key:<{38 - len(pad)}}: {NA if value is None else value}" if value != "" else f"{pad}{key}")

    for gpu in snap.gpus:
        out.append(f"GPU {gpu.pci_bus_id or gpu.index}")
        if gpu.lost:
            item(1, "Product Name", "Unknown Error: GPU is lost")
            continue
        item(1, "Product Name", gpu.name)
        item(1, "Persistence Mode", "Enabled" if gpu.persistence_mode else "Disabled")
        item(1, "Serial Number", gpu.serial)
        item(1, "GPU UUID", gpu.uuid)
        item(1, "Minor Number", gpu.minor_number)
        item(1, "Compute Capability", gpu.compute_capability)
        item(1, "PCI")
        item(2, "Bus Id", gpu.pci_bus_id)
        item(2, "Device Id", None if gpu.pci_device_id is None else f"0x{gpu.pci_device_id:08X}")
        item(2, "Sub System Id", None if gpu.pci_subsystem_id is None else f"0x{gpu.pci_subsystem_id:08X}")
        item(2, "Link Generation", gpu.pcie_generation)
        item(2, "Link Width", _unit(gpu.pcie_width, "x"))
        item(1, "Fan Speed", _unit(gpu.fan_speed, " %"))
        item(1, "Performance State", None if gpu.pstate is None else f"P{gpu.pstate}")
        item(1, "FB Memory Usage")
        for key, value in (("Total", gpu.memory_total), ("Reserved", gpu.memory_reserved),
                           ("Used", gpu.memory_used), ("Free", gpu.memory_free)):
            item(2, key, None if value is None else f"{value // MIB} MiB")
        item(1, "BAR1 Memory Usage")
        item(2, "Total", None if gpu.bar1_total is None else f"{gpu.bar1_total // MIB} MiB")
        item(2, "Used", None if gpu.bar1_used is None else f"{gpu.bar1_used // MIB} MiB")
        item(1, "Compute Mode", "Default")
        item(1, "Utilization")
        item(2, "GPU", _unit(gpu.utilization_gpu, " %"))
        item(2, "Memory", _unit(gpu.utilization_memory, " %"))
        item(2, "Encoder", _unit(gpu.encoder, " %"))
        item(2, "Decoder", _unit(gpu.decoder, " %"))
        item(1, "ECC Mode")
        item(2, "Current", None if gpu.ecc_enabled is None else ("Enabled" if gpu.ecc_enabled else "Disabled"))
        item(1, "ECC Errors")
        item(2, "Volatile Correctable", gpu.ecc_corrected_volatile)
        item(2, "Volatile Uncorrectable", gpu.ecc_uncorrected_volatile)
        item(2, "Aggregate Uncorrectable", gpu.ecc_uncorrected_aggregate)
        item(1, "Temperature")
        item(2, "GPU Current Temp", _unit(gpu.temperature, " C"))
        item(2, "GPU Shutdown Temp", _unit(gpu.temperature_shutdown, " C"))
        item(2, "GPU Slowdown Temp", _unit(gpu.temperature_slowdown, " C"))
        item(1, "GPU Power Readings")
        for key, value in (("Power Draw", gpu.power_draw_mw), ("Current Power Limit", gpu.power_limit_mw),
                           ("Min Power Limit", gpu.power_min_mw), ("Max Power Limit", gpu.power_max_mw)):
            item(2, key, None if value is None else f"{value / 1000:.2f} W")
        item(1, "Clocks")
        item(2, "Graphics", _unit(gpu.clock_graphics, " MHz"))
        item(2, "SM", _unit(gpu.clock_sm, " MHz"))
        item(2, "Memory", _unit(gpu.clock_mem, " MHz"))
        item(1, "Max Clocks")
        item(2, "SM", _unit(gpu.clock_max_sm, " MHz"))
        item(2, "Memory", _unit(gpu.clock_max_mem, " MHz"))
        item(1, "Processes", "" if gpu.processes else "None")
        for proc in gpu.processes:
            item(2, "Process ID", proc.pid)
            item(3, "Type", proc.type)
            item(3, "Name", proc.name)
            item(3, "Used GPU Memory", None if proc.used_memory is None else f"{proc.used_memory // MIB} MiB")
        out.append("")
    out.append(note)
    return "\n".join(out)
