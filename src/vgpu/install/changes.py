"""Apply an install plan so that it can be undone exactly.

Every path the install writes is recorded in a manifest (``/var/lib/vgpu/install.json``);
a file it replaces is moved to ``/var/lib/vgpu/backup/`` first, and folders it had to
create are listed, so ``uninstall`` puts back exactly what was there.  A device node is
made only where nothing is (a node of NVIDIA's driver stays as it is).  A second install
changes only what differs, and nothing at all when everything is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vgpu.diagnose.libraries import identify
from vgpu.diagnose.loader import follow
from vgpu.install.layout import TMPFILES, Change
from vgpu.launcher.devices import is_node, make_node

STATE_DIR = "/var/lib/vgpu"
MANIFEST = f"{STATE_DIR}/install.json"
BACKUP_DIR = f"{STATE_DIR}/backup"
LD_CACHE = "/etc/ld.so.cache"
DRIVER_NAMES = ("libcuda.so", "libnvidia-ml.so")


class InstallError(RuntimeError):
    pass


def on_disk(root: Path, path: str) -> Path:
    """Where a path of the installed system is in the tree at ``root``."""
    return root / path.lstrip("/")


@dataclass
class Manifest:
    entries: list[dict] = field(default_factory=list)   # path, kind, backup (or None)
    created_dirs: list[str] = field(default_factory=list)
    ld_cache_existed: bool = True

    @classmethod
    def load(cls, root: Path) -> Manifest | None:
        path = on_disk(root, MANIFEST)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(data["entries"], data["created_dirs"], data["ld_cache_existed"])

    def save(self, root: Path) -> None:
        path = on_disk(root, MANIFEST)
        path.write_text(json.dumps(vars(self), indent=2) + "\n")

    def entry(self, path: str) -> dict | None:
        return next((entry for entry in self.entries if entry["path"] == path), None)


def _number(text: str) -> tuple[int, int]:
    """A device number written major:minor."""
    major, minor = text.split(":")
    return int(major), int(minor)


def _satisfied(root: Path, change: Change) -> bool:
    target = on_disk(root, change.path)
    if change.kind == "node":
        return is_node(target, *_number(change.source))
    if change.kind == "link":
        return target.is_symlink() and os.readlink(target) == change.source
    if target.is_symlink() or not target.is_file():
        return False
    wanted = Path(change.source).read_bytes() if change.kind == "file" else change.source.encode()
    return target.read_bytes() == wanted


def _shadowed_driver(root: Path, change: Change, manifest: Manifest) -> str | None:
    """What real driver library a change would hide, or None."""
    name = change.path.rsplit("/", 1)[-1]
    if not name.startswith(DRIVER_NAMES) or manifest.entry(change.path):
        return None
    real = follow(root, change.path)
    if real is not None and identify(real).kind == "driver":
        return f"{change.path} is /{real.relative_to(root).as_posix()}, a driver library that is not vgpu's " \
               "(NVIDIA's, most likely)"
    return None


def _make_parents(root: Path, path: str, manifest: Manifest) -> None:
    missing = []
    parent = on_disk(root, path).parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
        manifest.created_dirs.append("/" + folder.relative_to(root).as_posix())


def _write(root: Path, change: Change) -> None:
    target = on_disk(root, change.path)
    temporary = target.with_name(f".{target.name}.vgpu-new")
    temporary.unlink(missing_ok=True)
    if change.kind == "link":
        temporary.symlink_to(change.source)
    elif change.kind == "node":
        make_node(temporary, *_number(change.source))
    elif change.kind == "file":
        shutil.copyfile(change.source, temporary)
        temporary.chmod(0o755)
    else:
        temporary.write_text(change.source)
        temporary.chmod(0o644)
    temporary.replace(target)


def _ldconfig(root: Path) -> str:
    """Rebuild the loader's cache for the tree; what happened, in words."""
    command = shutil.which("ldconfig") or "/sbin/ldconfig"
    if not Path(command).exists():
        return "ldconfig not found: the loader's cache was not rebuilt"
    args = [command] if root == Path("/") else [command, "-r", str(root)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise InstallError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return f"ran {' '.join(args)}"


def install(root: Path, changes: list[Change], force: bool = False, dry_run: bool = False) -> list[str]:
    """Apply ``changes``; the lines of what was (or, with ``dry_run``, would be) done."""
    manifest = Manifest.load(root) or Manifest(ld_cache_existed=on_disk(root, LD_CACHE).exists())
    refusals = [reason for change in changes if (reason := _shadowed_driver(root, change, manifest))]
    if refusals and not force:
        raise InstallError("refusing to hide a real driver: " + "; ".join(refusals)
                           + ". vgpu would take its place for every program; pass --force if that is what you want")
    # where a device node is that the plan would not make (NVIDIA's driver made it), it stays
    kept = [change for change in changes if change.kind == "node" and os.path.lexists(on_disk(root, change.path))
            and not _satisfied(root, change)]
    pending = [change for change in changes if change not in kept and not _satisfied(root, change)]
    if not pending:
        return ["nothing to change: every file and link is in place"]
    recorded = {change.path for change in pending if manifest.entry(change.path)}
    # what is there now and not ours is kept, to be put back by uninstall
    replaced = {change.path for change in pending
                if change.path not in recorded and os.path.lexists(on_disk(root, change.path))}
    lines = [change.describe() + (f" (the present one is kept in {BACKUP_DIR})" if change.path in replaced else "")
             for change in pending] + [f"keep {change.path}, which is there already" for change in kept]
    if dry_run:
        return ["dry run, nothing changed:"] + lines + ["rebuild the loader's cache (ldconfig)"]
    _make_parents(root, MANIFEST, manifest)
    for change in pending:
        _make_parents(root, change.path, manifest)
        if change.kind == "node":
            try:
                _write(root, change)
            except PermissionError as error:
                lines.append(f"could not create {change.path} ({error.strerror}: making a device node needs root); "
                             f"at boot systemd-tmpfiles makes it from {TMPFILES}")
                continue
        if change.path not in recorded:
            backup = BACKUP_DIR + change.path if change.path in replaced else None
            if backup:
                on_disk(root, backup).parent.mkdir(parents=True, exist_ok=True)
                on_disk(root, change.path).rename(on_disk(root, backup))
            manifest.entries.append({"path": change.path, "kind": change.kind, "backup": backup}
                                    | ({"number": change.source} if change.kind == "node" else {}))
        if change.kind != "node":
            _write(root, change)
        manifest.save(root)  # after every change: an interrupted install can still be undone
    lines.append(_ldconfig(root))
    return lines


def uninstall(root: Path, dry_run: bool = False) -> list[str]:
    """Undo every recorded change, newest first, and put back what each replaced."""
    manifest = Manifest.load(root)
    if manifest is None:
        raise InstallError(f"no vgpu installation is recorded in {on_disk(root, MANIFEST)}; nothing to undo")
    lines = []
    for entry in reversed(manifest.entries):
        target = on_disk(root, entry["path"])
        if entry["kind"] == "node" and os.path.lexists(target) and not is_node(target, *_number(entry["number"])):
            lines.append(f"keep {entry['path']}: it is no longer the node the install made")
            continue
        lines.append(f"remove {entry['path']}" + (", put back the one it replaced" if entry["backup"] else ""))
        if dry_run:
            continue
        if os.path.lexists(target):
            target.unlink()
        if entry["backup"]:
            on_disk(root, entry["backup"]).rename(target)
    if dry_run:
        return ["dry run, nothing changed:"] + lines
    shutil.rmtree(on_disk(root, BACKUP_DIR), ignore_errors=True)
    on_disk(root, MANIFEST).unlink()
    for folder in reversed(manifest.created_dirs):
        path = on_disk(root, folder)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    lines.append(_ldconfig(root))
    if not manifest.ld_cache_existed:
        on_disk(root, LD_CACHE).unlink(missing_ok=True)
        lines.append(f"removed {LD_CACHE}, which the install had created")
    return lines
