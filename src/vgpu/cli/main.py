"""The ``vgpu`` command: a thin layer over the launcher, smi, profiles and the wire client."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from vgpu import launcher
from vgpu.device.profiles import all_profiles
from vgpu.wire.client import Client, ControlFailed, DaemonUnavailable

DEFAULT_GPUS = os.environ.get("VGPU_GPUS", "h100")
gpus_option = click.option("--gpus", default=DEFAULT_GPUS, show_default=True,
                           help="GPU set: 2xh100, h100,l4, or a TOML file (default from $VGPU_GPUS).")


def _fail(message: str) -> None:
    click.echo(f"vgpu: {message}", err=True)
    sys.exit(1)


def _client() -> Client:
    try:
        return Client()
    except DaemonUnavailable as error:
        _fail(str(error))
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """NVIDIA GPUs for machines that have none."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@gpus_option
@click.option("--no-device-nodes", is_flag=True,
              help="Run COMMAND with the host's /dev as it is, without NVIDIA's device nodes ($VGPU_DEVICE_NODES=0).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(gpus: str, no_device_nodes: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND with a private vgpud serving GPUS; exits with COMMAND's status.

    COMMAND sees /dev/nvidiactl, /dev/nvidia-uvm and /dev/nvidiaN for the GPUs: where the
    host lacks them, in a private mount namespace of its own."""
    try:
        sys.exit(launcher.run(gpus, list(command), device_nodes=not no_device_nodes))
    except launcher.LaunchError as error:
        _fail(str(error))


@main.command()
@gpus_option
@click.option("--backend", type=click.Choice(["sim", "remote"]), default="sim", show_default=True,
              help="sim: simulated GPUS; remote: a GPU host's GPUs (--connect, --token).")
@click.option("--connect", multiple=True, metavar="HOST:PORT",
              help="The GPU host's vgpud (backend remote); again for each further host, joined into one device list.")
@click.option("--token", multiple=True, help="Your tenant's token: one for every host, or one per --connect in "
                                            "order ($VGPU_TOKEN: comma-separated).")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The CA of the GPU host's certificate (default: the system's CAs).")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds before a silent GPU host counts as gone.")
def up(gpus: str, backend: str, connect: tuple[str, ...], token: tuple[str, ...], ca: Path | None,
       timeout: float) -> None:
    """Start a long-lived vgpud at the default socket: simulated GPUs, or GPU hosts'."""
    try:
        if backend == "remote":
            from vgpu.remote.relay import given_tokens

            tokens = given_tokens(token)
            if not connect or not tokens:
                _fail("--backend remote needs --connect HOST:PORT and --token (from `vgpu token create` on the GPU host)")
            socket_path, pid, statuses = launcher.up_remote(list(connect), tokens, ca, timeout)
            for address, status in zip(connect, statuses):
                gpus = ", ".join(f"{g['name']} ({g['memory_total'] >> 30} GiB)" for g in status["gpus"]) or "no GPUs"
                click.echo(f"vgpud {pid} at {socket_path} forwards to {address}: {gpus}")
            return
        socket_path, pid = launcher.up(gpus)
    except launcher.LaunchError as error:
        _fail(str(error))
    click.echo(f"vgpud {pid} serves {gpus} at {socket_path}")


@main.group()
def token() -> None:
    """Tokens for tenants that use this GPU host over the network (vgpud --listen)."""


state_dir_option = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                                 help="vgpud's state folder (default: $VGPU_STATE_DIR, /var/lib/vgpu for root, "
                                      "~/.local/state/vgpu).")


@token.command("create")
@click.option("--tenant", required=True, help="Who the token is for (letters, digits, - and _).")
@click.option("--gpus", "gpu_list", default=None, help="GPU indices the tenant may use, as 0,1 (default: all).")
@click.option("--memory", default=None, help="The tenant's memory quota per GPU, as 20g (default: the whole GPU).")
@state_dir_option
def token_create(tenant: str, gpu_list: str | None, memory: str | None, state_dir: Path | None) -> None:
    """Make a token; it is printed once, as the last line."""
    from vgpu.device.gpuset import parse_size
    from vgpu.remote.tokens import TokenStore, default_state_dir

    try:
        indices = [int(x) for x in gpu_list.split(",")] if gpu_list else None
        quota = parse_size(memory) if memory else None
        store = TokenStore(state_dir or default_state_dir())
        made = store.create(tenant, indices, quota)
    except ValueError as error:
        _fail(str(error))
    click.echo(f"tenant {tenant}: GPUs {gpu_list or 'all'}, memory {memory or 'whole GPUs'}; kept in {store.path}")
    click.echo(made)


@token.command("list")
@state_dir_option
def token_list(state_dir: Path | None) -> None:
    """The tenants that hold tokens (the tokens themselves are not kept)."""
    from vgpu.remote.tokens import TokenStore, default_state_dir

    for entry in TokenStore(state_dir or default_state_dir()).tenants():
        memory = f"{entry['memory'] >> 30} GiB" if entry.get("memory") else "whole GPUs"
        gpus = ",".join(map(str, entry["gpus"])) if entry.get("gpus") is not None else "all"
        click.echo(f"{entry['name']}: GPUs {gpus}, memory {memory}, made {time.ctime(entry['created'])}")


@token.command("revoke")
@click.option("--tenant", required=True)
@state_dir_option
def token_revoke(tenant: str, state_dir: Path | None) -> None:
    """Revoke every token of a tenant; new connections with them are refused at once."""
    from vgpu.remote.tokens import TokenStore, default_state_dir

    count = TokenStore(state_dir or default_state_dir()).revoke(tenant)
    click.echo(f"revoked {count} token(s) of {tenant}")


@main.command()
def down() -> None:
    """Stop the long-lived vgpud."""
    pid = launcher.down()
    click.echo("no vgpud was running" if pid is None else f"vgpud {pid} stopped")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print vgpud's status as JSON.")
def status(as_json: bool) -> None:
    """Show the running vgpud: its GPUs and client sessions."""
    with _client() as client:
        state = client.control("status")
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    console = Console()
    relay = state.get("relay")
    if relay:
        hosts = "GPU hosts" if "," in relay["connect"] else "GPU host"
        console.print(f"vgpud {relay['pid']} at {relay['socket']} relays to the {hosts} {relay['connect']}:")
    joined = "hosts" in state
    if joined:  # GPU hosts joined by the relay: each one's own vgpud
        for host in state["hosts"]:
            console.print(f"vgpud {host.get('pid')} ({host.get('backend')}) at {host['connect']}, driver "
                          f"{host.get('driver_version')}")
    else:
        console.print(f"vgpud {state['pid']} ({state['backend']}) at {state['socket']}, driver "
                      f"{state['driver_version']}, up {time.time() - state['started']:.0f} s")
    gpus = Table("GPU", "name", *(("host",) if joined else ()), "memory used / total", "util", "temp", "power", "state")
    for g in state["gpus"]:
        gpus.add_row(str(g["index"]), g["name"], *((g["host"],) if joined else ()),
                     f"{g['memory_used'] >> 20} / {g['memory_total'] >> 20} MiB",
                     f"{g['utilization']}%", f"{g['temperature']}C", f"{g['power_mw'] / 1000:.0f} W",
                     "lost" if g["lost"] else "ok")
    console.print(gpus)
    sessions = Table("session", "pid", "executable", "connections", "calls", "memory held")
    for s in state["sessions"]:
        held = ", ".join(f"GPU {k}: {v >> 20} MiB" for k, v in s["held"].items()) or "-"
        sessions.add_row(str(s["id"]), str(s["pid"]), s["exe"], str(s["connections"]), str(s["calls"]), held)
    console.print(sessions)
    compute = state.get("compute")
    if compute:
        counts = compute["launches"]
        said = ", ".join(f"{counts[k]} {k}" for k in ("computed", "not computed", "failed", "pending") if counts.get(k))
        console.print(f"kernels compute: {'on' if compute['enabled'] else 'off'}"
                      + (f"; launches kept: {said} (`vgpu launches` says why)" if said else ""))


@main.command()
def env() -> None:
    """Print export lines that point programs at vgpu: eval "$(vgpu env)"."""
    for line in launcher.env_lines():
        click.echo(line)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def profiles(as_json: bool) -> None:
    """List the GPU profiles --gpus accepts."""
    known = all_profiles()
    if as_json:
        click.echo(json.dumps({k: {**vars(p), "compute_capability": list(p.compute_capability)}
                               for k, p in known.items()}, indent=2))
        return
    table = Table("profile", "name", "memory", "SMs", "CC", "power", "unverified values")
    for key, p in known.items():
        table.add_row(key, p.name, f"{p.memory_total_mib} MiB", str(p.sm_count),
                      ".".join(map(str, p.compute_capability)), f"{p.power_limit_w} W", ", ".join(p.unverified) or "-")
    Console().print(table)


@main.command()
@click.option("--query-gpu", "query", help="Comma-separated fields, e.g. index,name,memory.total.")
@click.option("--format", "fmt", default="csv", help="csv[,noheader][,nounits]")
@click.option("-q", "--query", "long_report", is_flag=True, help="The long per-GPU report.")
@click.option("--json", "as_json", is_flag=True, help="Everything read, as JSON.")
def smi(query: str | None, fmt: str, long_report: bool, as_json: bool) -> None:
    """nvidia-smi for vgpu, reading through libnvidia-ml.so.1 like any NVML client."""
    import pynvml

    from vgpu.smi import render, snapshot

    try:
        snap = snapshot.take()
    except pynvml.NVMLError as error:
        _fail(f"NVML: {error}")
    if as_json:
        click.echo(json.dumps(snap.to_json(), indent=2))
    elif query:
        options = {o.strip() for o in fmt.split(",")}
        if "csv" not in options:
            _fail("--query-gpu needs --format=csv")
        try:
            click.echo(render.query_csv(snap, query.split(","), "noheader" not in options, "nounits" not in options))
        except ValueError as error:
            _fail(str(error))
    elif long_report:
        click.echo(render.query_text(snap, note=_backend_note()))
    else:
        click.echo(render.table(snap, note=_backend_note()))


def _backend_note() -> str:
    """What the GPUs are, as vgpud says (its GPU host's, through a relay)."""
    from vgpu.smi import render

    try:
        with Client(timeout=2) as client:
            status = client.control("status")
    except (DaemonUnavailable, OSError, ControlFailed):
        status = {}
    return render.REAL_NOTE if status.get("backend") == "cuda" else render.sim_note(status.get("compute"))


@main.group()
def fault() -> None:
    """Inject or clear GPU faults (Xid events, ECC errors, a lost GPU)."""


@fault.command("inject")
@click.option("--gpu", type=int, required=True)
@click.argument("kind")
def fault_inject(gpu: int, kind: str) -> None:
    """KIND: xid=N, ecc-sbe, ecc-dbe or lost."""
    name, _, value = kind.partition("=")
    if name == "xid" and not value.isdigit():
        _fail("write an Xid as xid=N, for example xid=79")
    with _client() as client:
        try:
            reply = client.control("fault", gpu=gpu, kind=name, xid=int(value or 0))
        except ControlFailed as error:
            _fail(str(error))
    click.echo(reply["message"])


@fault.command("clear")
@click.option("--gpu", type=int, default=None, help="One GPU (default: all).")
def fault_clear(gpu: int | None) -> None:
    """Clear faults: a lost GPU answers again, volatile ECC counters reset."""
    with _client() as client:
        try:
            reply = client.control("clear", gpu=gpu)
        except ControlFailed as error:
            _fail(str(error))
    click.echo(f"cleared GPU(s) {', '.join(map(str, reply['cleared']))}")


def _sessions() -> dict[int, dict]:
    """vgpud's sessions by pid, or none when no vgpud answers."""
    try:
        with Client() as client:
            return {s["pid"]: s for s in client.control("status")["sessions"]}
    except (DaemonUnavailable, OSError):
        return {}


def _describe(entry) -> tuple[str, str, str]:
    program = " ".join(entry.cmdline)[:60] or (entry.exe or "?")
    if entry.unreadable:
        libraries = f"maps unreadable: {entry.unreadable}"
    else:
        libraries = "\n".join(f"{lib.path} ({lib.detail or lib.kind})" for lib in entry.libraries) or "-"
    if entry.session:
        held = ", ".join(f"GPU {k}: {v >> 20} MiB" for k, v in entry.session["held"].items()) or "no memory"
        session = f"session {entry.session['id']}, {held}"
    else:
        session = "-"
    return program, libraries, session


@main.command()
@click.option("--all", "everything", is_flag=True,
              help="Also processes with only runtime libraries (cudart, cuBLAS, ggml), a vgpud session, or unreadable maps.")
@click.option("--watch", is_flag=True, help="Poll, printing each process the first time it is seen.")
@click.option("--interval", type=float, default=0.05, show_default=True, help="Seconds between polls (--watch).")
@click.option("--seconds", type=float, default=None, help="Stop watching after this long (default: Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="JSON (one object per line with --watch).")
def ps(everything: bool, watch: bool, interval: float, seconds: float | None, as_json: bool) -> None:
    """Live processes with GPU libraries mapped, what each library really is, and their vgpud session."""
    from vgpu.diagnose import processes

    console = Console()
    if watch:
        if not as_json:
            console.print(f"watching every {interval * 1000:.0f} ms: a process that lives less than that can be "
                          "missed; `vgpu trace -- CMD` sees every one")
        try:
            for entry in processes.watch(interval, seconds, _sessions, everything):
                if as_json:
                    click.echo(json.dumps(entry.to_json()), nl=True)
                else:
                    program, libraries, session = _describe(entry)
                    console.print(f"{entry.pid} (parent {entry.ppid}) {program}: {libraries.replace(chr(10), '; ')}"
                                  f" [{session}]")
        except KeyboardInterrupt:
            pass
        return
    found = processes.scan(_sessions(), everything)
    if as_json:
        click.echo(json.dumps([entry.to_json() for entry in found], indent=2))
        return
    table = Table("PID", "parent", "program", "GPU libraries mapped (what they are)", "vgpud")
    for entry in found:
        table.add_row(str(entry.pid), str(entry.ppid), *_describe(entry))
    console.print(table)
    if not found:
        console.print("no process has a GPU driver library mapped" + ("" if everything else " (--all shows more)"))


@main.command()
@click.option("--pid", type=int, default=None, help="Only this process's launches.")
@click.option("--last", type=int, default=None, help="Only the most recent N.")
@click.option("--json", "as_json", is_flag=True, help="Print vgpud's record as JSON.")
def launches(pid: int | None, last: int | None, as_json: bool) -> None:
    """Kernels each process launched on the simulated GPUs: timed, and computed or why not."""
    from vgpu.smi import launches as view

    with _client() as client:
        reply = client.control("launches", pid=pid, limit=last)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    else:
        view.render(reply, Console())


root_option = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
                           show_default=True, help="The system's tree (a staged one for packaging or tests).")


@main.command()
@root_option
@click.option("--libdir", default=None, help="Library folder (default: the distribution's, e.g. /usr/lib64).")
@click.option("--ollama", default="auto", show_default=True,
              help="Ollama installations to link into: auto (/usr/local, /usr), none, or an ollama path.")
@click.option("--gpus", default="h100", show_default=True, help="The GPUs the vgpud service simulates.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--force", is_flag=True, help="Also hide a real NVIDIA driver library.")
def install(root: Path, libdir: str | None, ollama: str, gpus: str, dry_run: bool, force: bool) -> None:
    """Install the vgpu libraries where applications look, with the links Ollama's runners need."""
    from vgpu.install import changes, layout

    try:
        done = changes.install(root, layout.plan(root, libdir, ollama, gpus), force=force, dry_run=dry_run)
    except (changes.InstallError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo("\n".join(done))
    if not dry_run and root == Path("/") and not done[0].startswith("nothing"):
        click.echo(f"next: systemctl daemon-reload && systemctl enable --now {layout.UNIT_NAME}")


@main.command()
@root_option
@click.option("--json", "as_json", is_flag=True, help="The findings as one JSON document.")
def doctor(root: Path, as_json: bool) -> None:
    """Check that applications find the vgpu libraries and get GPUs; exit 1 on any problem."""
    from vgpu.diagnose import doctor as checks

    findings = checks.diagnose(root)
    if as_json:
        click.echo(json.dumps([vars(finding) for finding in findings], indent=2))
    else:
        console = Console()
        for kind, title in (("verified", "Verified"), ("problem", "Problems"), ("not verified", "Not verified")):
            chosen = [finding for finding in findings if finding.kind == kind]
            console.print(f"[bold]{title}[/bold] ({len(chosen)})")
            for finding in chosen:
                console.print(f"  • {finding.text}", highlight=False, markup=False)
                console.print(f"    how: {finding.how}", style="dim", highlight=False, markup=False)
                if finding.advice:
                    console.print(f"    fix: {finding.advice}" if kind == "problem" else f"    check: {finding.advice}",
                                  style="yellow", highlight=False, markup=False)
    sys.exit(1 if any(finding.kind == "problem" for finding in findings) else 0)


@main.command()
@root_option
@click.option("--dry-run", is_flag=True, help="Print what would be undone; change nothing.")
def uninstall(root: Path, dry_run: bool) -> None:
    """Undo `vgpu install`: remove what it placed and put back what it replaced."""
    from vgpu.install import changes

    try:
        click.echo("\n".join(changes.uninstall(root, dry_run=dry_run)))
    except changes.InstallError as error:
        raise click.ClickException(str(error)) from None


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the per-process records (default: a new one under /tmp, kept).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as a self-contained HTML page.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as one JSON document instead.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def trace(out_dir: Path | None, html_file: Path | None, as_json: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND and show when, where and why each of its processes loaded GPU libraries."""
    from vgpu.trace import recorder, render
    from vgpu.trace.report import Report

    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="vgpu-trace-"))
    # with --json, standard output is the report's alone: the command's own goes to standard error
    run = recorder.run(list(command), out_dir, stdout=sys.stderr if as_json else None)
    report = Report.read(out_dir, run)
    if html_file:
        html_file.write_text(render.to_html(report))
    if as_json:
        click.echo(render.to_json(report))
    else:
        console = Console()
        render.terminal(report, console)
        console.print(f"records: {out_dir}" + (f"; page: {html_file}" if html_file else "")
                      + f"; exit status {run.status}", style="dim")
    sys.exit(run.status if run.status >= 0 else 128 - run.status)


@main.command()
@click.option("--gpu", type=int, default=0, show_default=True)
@click.option("--memory", default="0", help="Device memory to hold, e.g. 20g, 512m.")
@click.option("--utilization", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Share of each second the GPU is kept busy.")
@click.option("--seconds", type=float, default=10, show_default=True)
def workload(gpu: int, memory: str, utilization: int, seconds: float) -> None:
    """Hold memory and keep a GPU busy, as a CUDA process would (for demos and tests)."""
    size = _parse_size(memory)
    with _client() as client:
        try:
            if size:
                client.control("hold", gpu=gpu, bytes=size)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if utilization:
                    client.control("run", gpu=gpu, seconds=utilization / 1000)
                time.sleep(0.1)
        except ControlFailed as error:
            _fail(str(error))


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        _fail(f"bad size {text!r}; write it as 20g, 512m or a byte count")
        raise


if __name__ == "__main__":
    main()
