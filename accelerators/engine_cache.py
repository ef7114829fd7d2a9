"""On-disk cache of exported ONNX graphs and TensorRT engines, keyed by everything that changes them.

StreamDiffusion keys engines by file name only, so a changed LoRA, resolution or TensorRT version
silently loads a stale engine. Here an entry is a folder named by the hash of an `EngineKey`
(model, weight fingerprint covering fused LoRAs, resolution range, batch rows, bank shape,
precision, builder version, GPU compute capability) holding the artifact files and `entry.json`:
the full key plus the size and sha256 of every file. An entry is only used when its recorded key
equals the requested one and every file still hashes to what was recorded; anything else is
reported (`get`) or rebuilt (`get_or_build`), never loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from livediff.accelerators.base import CACHE_ENV
from livediff.errors import AcceleratorError
from livediff.files import file_sha256

log = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
ENTRY_FORMAT = 1
KINDS = ("onnx", "tensorrt", "openvino")
_SAMPLES_PER_TENSOR = 4096


@dataclass(frozen=True)
class EngineKey:
    """Everything an artifact depends on. Fields that do not apply to a kind are None.

    rows: (min, opt, max) UNet rows of the profile; None for ONNX graphs, whose rows axis is
        dynamic. CFG mode, steps and frame_buffer_size enter through the rows (see `BuildTarget.stream_rows`).
    resolution: (min_height, min_width, max_height, max_width) in pixels.
    opt_resolution: (height, width) the engine is tuned for (TensorRT profiles only).
    builder: the exporter/builder and its version ("torch 2.13.0 opset 18", "tensorrt 10.7.0").
    device: GPU compute capability ("sm_89") for engines; None for device-independent graphs.
    inputs: TensorRT engines: (name, min, opt, max shape) of every input of the engine's profile, so the
        key names the shapes an engine was built for (e.g. the causal transformer's chunk tokens, cache
        slots and text tokens) instead of leaving them to be inferred from the other fields. Left out of
        the JSON when None, so keys without it (ONNX graphs, OpenVINO models) keep their digests.
    """

    kind: str
    network: str
    model: str
    loras: tuple[str, ...]
    weights: str
    resolution: tuple[int, int, int, int]
    precision: str
    builder: str
    rows: tuple[int, int, int] | None = None
    opt_resolution: tuple[int, int] | None = None
    bank: tuple[tuple[int, ...], ...] | None = None
    device: str | None = None
    inputs: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")

    def as_json(self) -> dict:
        data = asdict(self)
        if self.inputs is None:
            del data["inputs"]
        return json.loads(json.dumps(data))

    def digest(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    @property
    def folder_name(self) -> str:
        return f"{self.kind}-{self.network}-{self.digest()}"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's weights: every tensor's name, shape and dtype plus an even sample of its values.

    Sampling (4096 values per tensor) keeps this to a fraction of a second for a full SD UNet on
    GPU, and a fused LoRA changes every value of the matrices it touches, so it cannot hide.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::stride].to("cpu")
        if sample.dtype == torch.bfloat16:
            sample = sample.view(torch.int16)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:32]


_Identity = tuple[tuple[str, int, int], ...]
_known_fingerprints: dict[_Identity, tuple[tuple[weakref.ref, ...], str]] = {}


def loaded_weights_fingerprint(module: torch.nn.Module) -> str:
    """`weights_fingerprint`, computed once per set of loaded weights rather than at every call.

    The fingerprint reads a sample of every tensor back to the host (one device→host copy each), and a
    backend asks for it whenever a pipeline asks for a runner (stream rebuilds, bank variants). The
    weights are recognised by identity instead: the same tensor objects, at the same addresses, with
    the same in-place version counters (a fused LoRA or any in-place update bumps them). Weak
    references make sure a remembered identity belongs to tensors still alive, so freed weights whose
    memory is reused by a new model at the same addresses are never taken for the old ones. A write
    through `.data` bumps no version counter and is not seen: livediff changes weights only while
    loading them (LoRAs are fused in `load_models`, before any backend asks).
    """
    tensors = sorted(module.state_dict(keep_vars=True).items())
    identity = tuple((name, tensor.data_ptr(), tensor._version) for name, tensor in tensors)
    known = _known_fingerprints.get(identity)
    if known is not None and all(ref() is tensor for ref, (_, tensor) in zip(known[0], tensors)):
        return known[1]
    fingerprint = weights_fingerprint(module)
    for stale in [key for key, (refs, _) in _known_fingerprints.items() if any(ref() is None for ref in refs)]:
        del _known_fingerprints[stale]
    _known_fingerprints[identity] = (tuple(weakref.ref(tensor) for _, tensor in tensors), fingerprint)
    return fingerprint


@dataclass
class CacheEntry:
    path: Path
    key: dict
    files: dict[str, dict]
    created: float = 0.0
    problem: str | None = field(default=None, compare=False)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def size(self) -> int:
        return sum(int(info.get("size", 0)) for info in self.files.values())


class EngineCache:
    """Artifacts under `root`, one folder per key; see the module docstring for the rules."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: EngineKey) -> Path:
        return self.root / key.folder_name

    def timing_cache_path(self, builder: str, device: str) -> Path:
        """TensorRT timing cache shared by every build with the same TensorRT version and GPU."""
        safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in f"{builder}-{device}")
        return self.root / "timing" / f"{safe}.cache"

    # --- reading -----------------------------------------------------------------------------
    @staticmethod
    def _read_entry(folder: Path) -> CacheEntry:
        meta_path = folder / ENTRY_FILE
        if not meta_path.is_file():
            return CacheEntry(folder, {}, {}, problem=f"{ENTRY_FILE} is missing (interrupted build?)")
        try:
            meta = json.loads(meta_path.read_text())
            entry = CacheEntry(folder, dict(meta["key"]), dict(meta["files"]), float(meta.get("created", 0)))
            if meta.get("format") != ENTRY_FORMAT:
                entry.problem = f"entry format {meta.get('format')!r} is not {ENTRY_FORMAT}"
            return entry
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return CacheEntry(folder, {}, {}, problem=f"{ENTRY_FILE} is unreadable ({exc})")

    @staticmethod
    def verify(entry: CacheEntry, hash_files: bool = True) -> str | None:
        """Why `entry` must not be loaded, or None when its files are intact."""
        if entry.problem:
            return entry.problem
        if not entry.files:
            return "the entry lists no files"
        for name, info in entry.files.items():
            path = entry.file(name)
            try:
                size = path.stat().st_size
                if size != info.get("size"):
                    return f"file {name} has {size} bytes, {info.get('size')} were recorded"
                if hash_files and file_sha256(path) != info.get("sha256"):
                    return f"file {name} does not match its recorded sha256 (corrupted or modified)"
            except FileNotFoundError:
                return f"file {name} is missing"
            except OSError as exc:  # e.g. removed by a builder replacing this unusable entry right now
                return f"file {name} cannot be read ({exc.strerror})"
        return None

    def inspect(self, key: EngineKey) -> tuple[CacheEntry | None, str | None]:
        """(entry, None) when valid; (None, None) when absent; (None, reason) when present but unusable."""
        folder = self.path(key)
        if not folder.exists():
            return None, None
        entry = self._read_entry(folder)
        if not entry.problem and entry.key != key.as_json():
            changed = sorted(k for k in set(entry.key) | set(key.as_json())
                             if entry.key.get(k) != key.as_json().get(k))
            return None, f"its recorded key differs in {', '.join(changed)}"
        problem = self.verify(entry)
        return (None, problem) if problem else (entry, None)

    def get(self, key: EngineKey) -> CacheEntry | None:
        """The valid entry, None when absent; an unusable entry is an error naming why."""
        entry, problem = self.inspect(key)
        if problem:
            raise AcceleratorError(f"cached {key.kind} for {key.network} at {self.path(key)} is unusable: {problem}; "
                                   f"rebuild it (livediff build-engines) or remove it (livediff engines clear)")
        return entry

    def entries(self) -> list[CacheEntry]:
        if not self.root.is_dir():
            return []
        folders = [p for p in sorted(self.root.iterdir()) if p.is_dir() and p.name.split("-", 1)[0] in KINDS]
        return [self._read_entry(p) for p in folders]

    # --- writing -----------------------------------------------------------------------------
    def get_or_build(self, key: EngineKey, build: Callable[[Path], None], allow_build: bool = True) -> CacheEntry:
        """The valid entry for `key`, building it (into a fresh folder) when absent or unusable."""
        entry, problem = self.inspect(key)
        if entry is not None:
            return entry
        if not allow_build:
            what = f"is unusable ({problem})" if problem else "does not exist"
            raise AcceleratorError(f"the {key.kind} artifact for {key.network} at {self.path(key)} {what} and "
                                   f"building was disabled; run `livediff build-engines` with the same settings")
        if problem:
            log.warning("rebuilding %s for %s at %s: %s", key.kind, key.network, self.path(key), problem)
        return self.store(key, build)

    def store(self, key: EngineKey, build: Callable[[Path], None]) -> CacheEntry:
        """Run `build(folder)` in a temporary folder, record hashes, then move it into place atomically."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AcceleratorError(f"the engine cache folder {str(self.root)!r} cannot be created ({exc.strerror}); "
                                   f"set {CACHE_ENV} or cache_dir to a writable folder") from exc
        staging = Path(tempfile.mkdtemp(prefix=f".build-{key.folder_name}-", dir=self.root))
        try:
            build(staging)
            files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
                     for p in sorted(staging.iterdir()) if p.is_file()}
            if not files:
                raise AcceleratorError(f"building the {key.kind} artifact for {key.network} produced no files")
            meta = dict(format=ENTRY_FORMAT, key=key.as_json(), files=files, created=time.time())
            (staging / ENTRY_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            target = self.path(key)
            built_elsewhere = self._take_or_replace(key, target, staging)
            if built_elsewhere is not None:
                return built_elsewhere
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return CacheEntry(target, meta["key"], files, meta["created"])

    def _take_or_replace(self, key: EngineKey, target: Path, staging: Path) -> CacheEntry | None:
        """Move `staging` into place, unless another builder (a thread, a second worker, a Ray replica)
        finished the same entry meanwhile: then its entry is returned and `staging` is dropped.

        Checking and moving happen under the key's lock, so a valid entry is never removed and a
        builder never sees another's entry half replaced; only an unusable entry is replaced.
        """
        with self._key_lock(key):
            entry, _problem = self.inspect(key)
            if entry is not None:
                shutil.rmtree(staging, ignore_errors=True)
                return entry
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            return None

    @contextmanager
    def _key_lock(self, key: EngineKey) -> Iterator[None]:
        """An exclusive `flock` on `.lock-<entry folder>`, between threads and processes alike; the OS
        drops it when its holder dies, so a killed builder leaves no stale lock."""
        import fcntl

        with open(self.root / f".lock-{key.folder_name}", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def remove(self, entry: CacheEntry) -> None:
        shutil.rmtree(entry.path)

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry (or those of one kind), and with every entry leftover staging folders and
        lock files; returns how many entries."""
        removed = 0
        for entry in self.entries():
            if kind is None or entry.path.name.startswith(f"{kind}-"):
                self.remove(entry)
                removed += 1
        if kind is None and self.root.is_dir():
            for leftover in self.root.glob(".build-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for lock in self.root.glob(".lock-*"):
                lock.unlink(missing_ok=True)
        return removed
