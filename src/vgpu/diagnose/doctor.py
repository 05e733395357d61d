"""`vgpu doctor`: is vgpu installed where applications look, and do they get it?

Each finding says how it was established.  Problems carry their fix; what could not be
checked says how to check it.  Files are read in the tree at ``root``; the loader's
choices come from the model in ``vgpu.diagnose.loader``; the self-test loads the
installed libraries in a child process and calls them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vgpu.diagnose.libraries import DRIVER_SONAMES, identify
from vgpu.diagnose.loader import elf_facts, follow, host_mismatch, link_chain, read_cache, resolve
from vgpu.install import changes, layout
from vgpu.launcher import LIBRARIES, LIBRARY_OF
from vgpu.launcher.devices import HOST_VIEW, NVIDIA_MAJOR, is_node
from vgpu.wire import protocol
from vgpu.wire.client import Client, DaemonUnavailable



@dataclass
class Finding:
    kind: str      # "verified", "problem", "not verified"
    text: str
    how: str       # how it was established
    advice: str = ""  # a problem's fix, or how to check what was not verified


class Doctor:
    def __init__(self, root: Path, socket: Path | None = None) -> None:
        self.root = root
        self.socket = socket or protocol.default_socket_path()
        self.findings: list[Finding] = []
        manifest = changes.Manifest.load(root)
        recorded = [e["path"] for e in manifest.entries if e["path"].endswith("/libvgpu-cuda.so")] if manifest else []
        self.libdir = recorded[0].rsplit("/", 1)[0] if recorded else layout.system_libdir(root)
        self.ollama_folders = layout.ollama_cuda_folders(root, "auto")
        self.manifest = manifest
        self.gpu_count: int | None = None  # what vgpud serves, once it has answered

    def add(self, kind: str, text: str, how: str, advice: str = "") -> None:
        self.findings.append(Finding(kind, text, how, advice))

    def on_disk(self, path: str) -> Path:
        return changes.on_disk(self.root, path)

    def run(self) -> list[Finding]:
        self.check_files()
        self.check_cache()
        self.check_consumers()
        self.check_daemon()
        self.check_device_nodes()
        self.self_test()
        self.add("not verified", "Python environments outside the usual places (system Pythons, /opt, home-folder "
                 "virtual environments, pyenv): not searched for cudart and PyTorch", "the folders searched: "
                 + ", ".join(SITE_PATTERNS), "run `vgpu doctor` with that environment's Python, or "
                 "`vgpu trace -- python -c 'import torch; torch.cuda.init()'` to see what it loads")
        if self.root != Path("/"):
            self.add("not verified", f"what programs of the running system load: {self.root} is a staged tree, read "
                     "as files; the self-test loaded its libraries directly", "--root", "run `vgpu doctor` on the "
                     "installed system")
        return self.findings

    def check_files(self) -> None:
        for library in LIBRARIES:
            path = f"{self.libdir}/{library}"
            facts = elf_facts(self.on_disk(path))
            if facts is None:
                self.add("problem", f"{path} is missing or not an ELF file", "read with pyelftools",
                         "run `vgpu install`")
                continue
            identity = identify(self.on_disk(path))
            if host_mismatch(facts):
                self.add("problem", f"{path} is built for {facts.machine}, ELF{facts.elf_class}; this host is "
                                    f"{os.uname().machine}",
                         "ELF header", "install the vgpu package built for this machine, then `vgpu install`")
            else:
                self.add("verified", f"{path}: {identity.detail or identity.kind}, SONAME {facts.soname}, "
                                     f"ELF{facts.elf_class} {facts.machine}", "ELF header and .vgpu section")
        for folder in [self.libdir, *self.ollama_folders]:
            for name in DRIVER_SONAMES:
                self.check_link(f"{folder}/{name}")

    def check_link(self, path: str) -> None:
        if not os.path.lexists(self.on_disk(path)):
            where = "Ollama's runners would look past this folder" if "/ollama/" in path else "programs asking " \
                    "for it by name rely on the loader's cache"
            self.add("problem", f"{path} is missing: {where}", "looked for the file", "run `vgpu install` again")
            return
        chain, current = link_chain(self.root, path)
        if current is None:
            self.add("problem", f"{path} points to a missing file {chain[-1]}", "followed the links: "
                     + " -> ".join(chain), "run `vgpu install` again")
            return
        kind = identify(current).kind
        if kind != "vgpu":
            self.add("problem", f"{path} is {chain[-1]}, {kind} library, not vgpu's", "followed the links and read "
                     "the file: " + " -> ".join(chain), "run `vgpu install` (with --force to hide a real driver)")
        else:
            self.add("verified", f"{path} -> vgpu's {LIBRARY_OF[path.rsplit('/', 1)[-1]]}",
                     "followed the links: " + " -> ".join(chain))

    def check_cache(self) -> None:
        cache_path = self.on_disk("/etc/ld.so.cache")
        if not cache_path.exists():
            self.add("problem", "there is no /etc/ld.so.cache", "looked for the file", "run `ldconfig`")
            return
        cache = read_cache(cache_path)
        for name in DRIVER_SONAMES:
            entry = cache.get(name)
            if entry is None:
                self.add("problem", f"ld.so.cache has no entry for {name}: a program that finds it nowhere else "
                                    "gets no GPU", "read /etc/ld.so.cache", "run `ldconfig`")
                continue
            real = follow(self.root, entry)
            if real is None:
                self.add("problem", f"ld.so.cache lists {name} at {entry}, which no longer exists: the cache is "
                                    "stale", "read /etc/ld.so.cache and followed the entry", "run `ldconfig`")
            elif (kind := identify(real).kind) != "vgpu":
                self.add("problem", f"ld.so.cache resolves {name} to {entry}, {kind} library, not "
                                    "vgpu's", "read /etc/ld.so.cache and the file", "run `vgpu install`")
            else:
                self.add("verified", f"ld.so.cache: {name} -> {entry} (vgpu's)", "read /etc/ld.so.cache")

    @cached_property
    def consumers(self) -> list[tuple[str, list[str], str]]:
        """Libraries that load the driver, the LD_LIBRARY_PATH they are loaded under, and whose it is."""
        found = []
        for folder in self.ollama_folders:
            ollama_lib = folder.rsplit("/", 1)[0]
            for library in sorted(self.on_disk(folder).glob("lib*.so*")):
                if library.name.startswith(("libggml-cuda", "libcudart")) and not library.is_symlink():
                    found.append((f"{folder}/{library.name}", [ollama_lib, folder], "as Ollama builds it"))
        search = os.environ.get("LD_LIBRARY_PATH", "").split(":") if self.root == Path("/") else []
        whose = "of this environment" if self.root == Path("/") else "empty"
        found += [(cudart, search, whose) for cudart in self.system_cudarts()]
        found += [(cudart, search, whose) for cudart in python_cudarts(self.root, search)]
        return found

    def system_cudarts(self) -> list[str]:
        """cudart libraries the system offers: the loader's cache and the CUDA toolkit folders."""
        found = []
        cache = self.on_disk("/etc/ld.so.cache")
        if cache.exists():
            found += [path for name, path in read_cache(cache).items() if name.startswith("libcudart.so.")]
        for pattern in ("usr/local/cuda*/lib64/libcudart.so.*", "usr/local/cuda*/targets/*/lib/libcudart.so.*"):
            found += ["/" + p.relative_to(self.root).as_posix() for p in sorted(self.root.glob(pattern))]
        real = {}
        for path in found:
            end = follow(self.root, path)
            if end is not None and not end.name.endswith(".so"):  # one entry per file, however it is reached
                real.setdefault(end.resolve(), path)
        return list(real.values())

    def check_consumers(self) -> None:
        exported = _exports(self.on_disk(f"{self.libdir}/libvgpu-cuda.so")) | \
            _exports(self.on_disk(f"{self.libdir}/libvgpu-nvml.so"))
        for consumer, search, whose in self.consumers:
            how = f"the loader model, with LD_LIBRARY_PATH={':'.join(search)} {whose}"
            for name in DRIVER_SONAMES:
                if name == "libnvidia-ml.so.1" and "cudart" in consumer:
                    continue
                answer = resolve(name, Path(consumer), search, self.root)
                tried = "; ".join(f"{c.path} ({c.via}): {c.problem or 'usable'}" for c in answer.tried)
                if answer.stopped_at:
                    self.add("problem", f"{consumer} cannot load {name}: {answer.stopped_at} is not an ELF file and "
                                        "the loader stops there", f"{how}; tried {tried}",
                             f"remove {answer.stopped_at}, then `vgpu install`")
                    continue
                real = follow(self.root, answer.path) if answer.path else None
                if real is None:
                    self.add("problem", f"{consumer} would find no {name}", f"{how}; tried {tried}",
                             "run `vgpu install`")
                elif (kind := identify(real).kind) != "vgpu":
                    self.add("problem", f"{consumer} would load {name} from {answer.path}, "
                                        f"{kind} library, not vgpu's", f"{how}; tried {tried}",
                             f"remove or rename {answer.path}, or run `vgpu install --force`")
                else:
                    self.add("verified", f"{consumer} loads {name} from {answer.path} (vgpu's)", how)
            needs = _undefined(self.on_disk(consumer))
            missing = sorted(needs - exported)
            if missing:
                self.add("problem", f"{consumer} needs {', '.join(missing[:8])}, which the vgpu libraries do not "
                                    "export", "compared the ELF symbol tables", "report it: vgpu must export them")

    def check_daemon(self) -> None:
        try:
            with Client(self.socket) as client:
                status = client.control("status")
        except (DaemonUnavailable, OSError) as error:
            self.add("problem", f"vgpud does not answer at {self.socket}: {error}", "connected to the socket",
                     f"start it: `systemctl start {layout.UNIT_NAME}` or `vgpu up`")
            return
        self.gpu_count = len(status.get("gpus", []))
        names = ", ".join(gpu["name"] for gpu in status.get("gpus", []))
        self.add("verified", f"vgpud {status.get('version')} ({status.get('backend')} backend, driver "
                             f"{status.get('driver_version')}) "
                             f"answers at {self.socket}: {names}",
                 "a status request over the socket")

    def check_device_nodes(self) -> None:
        """/dev/nvidiactl and /dev/nvidia0.. for vgpud's GPUs (one when it does not answer):
        programs such as JAX look for them before they use CUDA."""
        driver = self.on_disk("/proc/driver/nvidia").exists()
        count = 1 if self.gpu_count is None else self.gpu_count
        for path, minor in [("/dev/nvidiactl", 255), *((f"/dev/nvidia{i}", i) for i in range(count))]:
            target = self.on_disk(path)
            if not os.path.lexists(target):
                self.add("problem", f"{path} is missing: programs that look for it before they use CUDA (JAX) "
                                    "skip the GPUs", "looked for the file",
                         "run `vgpu install` (with --gpus as vgpud serves them), or use `vgpu run`, which gives "
                         "its command a /dev that has it")
            elif driver:
                self.add("verified", f"{path} is NVIDIA's: its driver is loaded", "looked for the file and for "
                         "/proc/driver/nvidia")
            elif self.manifest and self.manifest.entry(path) and is_node(target, NVIDIA_MAJOR, minor):
                self.add("verified", f"{path} is vgpu's: `vgpu install` made it", "read the file's device number "
                         f"and {changes.MANIFEST}; /proc/driver/nvidia is absent")
            elif self.on_disk(f"/dev/{HOST_VIEW}").is_dir():
                self.add("verified", f"{path} is vgpu's: `vgpu run` gave this process a /dev of its own",
                         f"looked for the file and /dev/{HOST_VIEW}; /proc/driver/nvidia is absent")
            else:
                self.add("verified", f"{path} exists; no NVIDIA driver is loaded and `vgpu install` did not make it",
                         "looked for the file and read the install manifest; /proc/driver/nvidia is absent")

    def self_test(self) -> None:
        cudarts = [str(self.on_disk(c)) for c, _, _ in self.consumers if "libcudart" in c]
        # the running system as its programs see it; a staged tree through its library folder
        search = os.environ.get("LD_LIBRARY_PATH", "") if self.root == Path("/") else str(self.on_disk(self.libdir))
        env = dict(os.environ, LD_LIBRARY_PATH=search, **{protocol.SOCKET_ENV: str(self.socket)})
        done = subprocess.run([sys.executable, "-c", _SELF_TEST, *cudarts], env=env, capture_output=True, text=True,
                              timeout=60)
        try:
            results = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            self.add("problem", f"the self-test process failed: {done.stderr.strip()[-300:]}",
                     "a child process loading the installed libraries", "run `vgpu trace -- vgpu doctor` to see why")
            return
        for entry in results:
            ok = entry["code"] == 0
            text = f"{entry['call']} -> {entry['code']} ({entry['name']}){': ' + entry['value'] if entry['value'] else ''}"
            self.add("verified" if ok else "problem", text, f"self-test in a child process ({entry['library']})",
                     "" if ok else "see the vgpud line above; `vgpu trace -- vgpu doctor` shows the loads")


_SELF_TEST = r"""
import ctypes, json, sys
from vgpu.api.manifest import result_name
out = []
def record(library, call, code, api, value=""):
    out.append({"library": library, "call": call, "code": code, "name": result_name(api, code), "value": value})
def load(name):
    try:
        return ctypes.CDLL(name)
    except OSError as error:
        out.append({"library": name, "call": f"dlopen {name}", "code": -1, "name": "failed", "value": str(error)})
nvml = load("libnvidia-ml.so.1")
code = nvml.nvmlInit_v2() if nvml else -1
if nvml:
    record("libnvidia-ml.so.1", "nvmlInit_v2", code, "nvml")
if code == 0:
    count = ctypes.c_uint(); code = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
    record("libnvidia-ml.so.1", "nvmlDeviceGetCount_v2", code, "nvml", f"{count.value} devices")
    handle = ctypes.c_void_p(); name = ctypes.create_string_buffer(96)
    if count.value and nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) == 0:
        code = nvml.nvmlDeviceGetName(handle, name, 96)
        record("libnvidia-ml.so.1", "nvmlDeviceGetName", code, "nvml", name.value.decode())
cuda = load("libcuda.so.1")
code = cuda.cuInit(0) if cuda else -1
if cuda:
    record("libcuda.so.1", "cuInit", code, "cuda")
if code == 0:
    count = ctypes.c_int(); code = cuda.cuDeviceGetCount(ctypes.byref(count))
    record("libcuda.so.1", "cuDeviceGetCount", code, "cuda", f"{count.value} devices")
    name = ctypes.create_string_buffer(96)
    if count.value:
        code = cuda.cuDeviceGetName(name, 96, 0)
        record("libcuda.so.1", "cuDeviceGetName", code, "cuda", name.value.decode())
for path in sys.argv[1:]:
    cudart = load(path)
    if not cudart:
        continue
    count = ctypes.c_int(); code = cudart.cudaGetDeviceCount(ctypes.byref(count))
    cudart.cudaGetErrorName.restype = ctypes.c_char_p  # the runtime names its own codes
    out.append({"library": path, "call": "cudaGetDeviceCount", "code": code,
                "name": cudart.cudaGetErrorName(code).decode(), "value": f"{count.value} devices"})
print(json.dumps(out))
"""


#: where Python environments usually are, below the root: system Pythons, /opt, home-folder
#: virtual environments and user sites, pyenv versions
SITE_PATTERNS = tuple(f"{base}/lib/python3*/{kind}-packages" for kind in ("site", "dist") for base in (
    "usr", "usr/local", "opt/*", "opt/*/*", "home/*/.local", "home/*/*", "home/*/*/*", "root/*",
    "root/.pyenv/versions/*", "home/*/.pyenv/versions/*"))


def site_dirs(root: Path) -> list[str]:
    """Package folders of the Python environments found below root (system paths), and on the
    running system this interpreter's own."""
    found = [p for pattern in SITE_PATTERNS for p in sorted(root.glob(pattern)) if p.is_dir()]
    paths = ["/" + p.relative_to(root).as_posix() for p in found]
    if root == Path("/"):
        paths += [entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")]
    return list(dict.fromkeys(paths))


def python_cudarts(root: Path, ld_library_path: list[str]) -> list[str]:
    """cudart libraries of NVIDIA's wheels in each environment, and the one each PyTorch
    loads (system paths): each dlopens libcuda.so.1 with the given LD_LIBRARY_PATH."""
    found: dict[Path, str] = {}
    for site in site_dirs(root):
        folder = root / site.lstrip("/")
        for cudart in sorted(folder.glob("nvidia/*/lib/libcudart.so.*")):
            found.setdefault(cudart.resolve(), f"{site}/{cudart.relative_to(folder).as_posix()}")
        torch_cuda = f"{site}/torch/lib/libtorch_cuda.so"
        facts = elf_facts(root / torch_cuda.lstrip("/"))
        for needed in facts.needed if facts else ():
            answer = resolve(needed, Path(torch_cuda), ld_library_path, root) if needed.startswith("libcudart") \
                else None
            end = follow(root, answer.path) if answer and answer.path else None
            if end is not None:
                found.setdefault(end.resolve(), answer.path)
    return list(found.values())


def _symbols(path: Path) -> list:
    try:
        with open(path, "rb") as handle:
            section = ELFFile(handle).get_section_by_name(".dynsym")
            return [] if section is None else list(section.iter_symbols())
    except (OSError, ELFError):
        return []


def _exports(path: Path) -> set[str]:
    return {s.name for s in _symbols(path) if s["st_shndx"] != "SHN_UNDEF" and s.name}


def _undefined(path: Path) -> set[str]:
    return {s.name for s in _symbols(path) if s["st_shndx"] == "SHN_UNDEF" and s.name.startswith(("cu", "nvml"))
            and not s.name.startswith(("cuda", "cublas", "cufft", "curand", "cusparse", "cusolver"))}


def diagnose(root: Path, socket: Path | None = None) -> list[Finding]:
    return Doctor(root, socket).run()
