"""EngineCache: what the key hashes, when an entry is reused, and that bad entries are never loaded."""
from __future__ import annotations

import json
import sys
import threading
from dataclasses import fields, replace

import pytest
import torch

from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.engine_cache import ENTRY_FILE, EngineCache, EngineKey, weights_fingerprint
from livediff.networks import stream_networks
from livediff.pipelines.runners import build_target
from livediff.pipelines.stream import stream_rows
from livediff.accelerators.tensorrt_backend import engine_key
from livediff.app.cli import main as cli
from livediff.pipelines import StreamConfig, shared_models
from livediff.errors import AcceleratorError

KEY = EngineKey(kind="tensorrt", network="unet", model="stabilityai/sd-turbo", loras=("lcm:1.0",), weights="abc",
                resolution=(512, 512, 512, 512), precision="float16", builder="tensorrt 10.7.0", rows=(1, 2, 2),
                opt_resolution=(512, 512), bank=(("kv0.k", (1, 4096, 320)),), device="sm_90")

CHANGED = {"kind": "onnx", "network": "vae_decoder", "model": "stabilityai/sd-turbo-2", "loras": ("lcm:0.5",),
           "weights": "abd", "resolution": (512, 512, 768, 768), "precision": "float32",
           "builder": "tensorrt 10.8.0", "rows": (1, 4, 4), "opt_resolution": (512, 768),
           "bank": (("kv0.k", (1, 8192, 320)),), "device": "sm_89",
           "inputs": (("sample", (1, 4, 64, 64), (2, 4, 64, 64), (2, 4, 64, 64)),)}


class Builder:
    """A build function that writes one artifact file and counts how often it ran."""

    def __init__(self, payload: bytes = b"engine bytes"):
        self.payload = payload
        self.calls = 0

    def __call__(self, folder):
        self.calls += 1
        (folder / "model.plan").write_bytes(self.payload)


def test_every_key_component_changes_the_key():
    assert set(CHANGED) == {f.name for f in fields(EngineKey)}
    digests = {KEY.digest()}
    for name, value in CHANGED.items():
        digests.add(replace(KEY, **{name: value}).digest())
    assert len(digests) == len(CHANGED) + 1


def test_equal_keys_hit_and_the_entry_is_built_once(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    first = cache.get_or_build(KEY, build)
    again = cache.get_or_build(replace(KEY), build)
    assert build.calls == 1 and first.path == again.path
    assert first.file("model.plan").read_bytes() == b"engine bytes"
    assert cache.get(KEY) is not None


def test_a_corrupted_engine_is_reported_by_get_and_rebuilt_by_get_or_build(tmp_path, caplog):
    cache, build = EngineCache(tmp_path), Builder()
    entry = cache.get_or_build(KEY, build)
    engine = entry.file("model.plan")
    engine.write_bytes(b"engine bytez")  # same size, different content
    with pytest.raises(AcceleratorError, match="sha256"):
        cache.get(KEY)
    rebuilt = cache.get_or_build(KEY, build)
    assert build.calls == 2 and rebuilt.file("model.plan").read_bytes() == b"engine bytes"
    assert "rebuilding" in caplog.text


def test_a_truncated_or_missing_file_is_never_loaded(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    entry = cache.get_or_build(KEY, build)
    entry.file("model.plan").write_bytes(b"engine")
    assert "bytes" in cache.inspect(KEY)[1]
    entry.file("model.plan").unlink()
    assert "missing" in cache.inspect(KEY)[1]


def test_an_entry_recorded_for_another_tensorrt_version_is_not_loaded(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    entry = cache.get_or_build(KEY, build)
    meta_path = entry.path / ENTRY_FILE
    meta = json.loads(meta_path.read_text())
    meta["key"]["builder"] = "tensorrt 9.3.0"
    meta_path.write_text(json.dumps(meta))
    entry_now, problem = cache.inspect(KEY)
    assert entry_now is None and "builder" in problem
    cache.get_or_build(KEY, build)
    assert build.calls == 2 and cache.get(KEY) is not None


def test_an_interrupted_build_folder_is_rebuilt(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    cache.path(KEY).mkdir(parents=True)
    (cache.path(KEY) / "model.plan").write_bytes(b"half an engine")
    assert "missing" in cache.inspect(KEY)[1]
    cache.get_or_build(KEY, build)
    assert build.calls == 1 and cache.get(KEY).file("model.plan").read_bytes() == b"engine bytes"


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    cache = EngineCache(tmp_path)

    def failing(folder):
        (folder / "model.plan").write_bytes(b"partial")
        raise AcceleratorError("TensorRT failed")

    with pytest.raises(AcceleratorError, match="TensorRT failed"):
        cache.get_or_build(KEY, failing)
    assert list(tmp_path.iterdir()) == []


def test_building_can_be_disabled(tmp_path):
    with pytest.raises(AcceleratorError, match="does not exist and building was disabled"):
        EngineCache(tmp_path).get_or_build(KEY, Builder(), allow_build=False)


def test_weights_fingerprint_sees_a_fused_lora_and_nothing_else():
    layer = torch.nn.Linear(64, 64)
    before = weights_fingerprint(layer)
    assert weights_fingerprint(layer) == before
    with torch.no_grad():
        up, down = torch.randn(64, 4) * 1e-3, torch.randn(4, 64)
        layer.weight += up @ down  # what fusing a rank-4 LoRA does to a weight
    assert weights_fingerprint(layer) != before


def test_tensorrt_key_follows_the_stream_settings():
    """cfg_type, steps and frame_buffer_size reach the key through the rows; sizes, GPU and version directly."""
    config = StreamConfig(model="tiny", t_index_list=(20, 40), cfg_type="self", width=64, height=64, device="cpu",
                          dtype="float32")
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype)
    unet = stream_networks(models)["unet"]

    def key(cfg_type="self", steps=2, frames=1, size=64, version="10.7.0", device="sm_90"):
        rows = stream_rows(steps, frames, cfg_type)
        target = replace(build_target(config), height=size, width=size)
        return engine_key(unet, target, rows, ResolutionRange.static(size, size), "float16", version, device).digest()

    base = key()
    variants = [key(cfg_type="full"), key(cfg_type="initialize"), key(steps=5), key(frames=2), key(size=128),
                key(version="10.8.0"), key(device="sm_89")]
    assert base == key() and base not in variants and len(set(variants)) == len(variants)
    assert key(cfg_type="none") == base  # same rows as `self`: the very same engine serves both
    assert key(cfg_type="initialize") == key(steps=3)  # 2 steps + 1 negative row = 3 steps: same shapes


def test_engines_list_and_clear_commands(tmp_path, capsys):
    cache = EngineCache(tmp_path)
    cache.get_or_build(KEY, Builder())
    cache.get_or_build(replace(KEY, kind="onnx", network="vae_decoder", rows=None), Builder())
    broken = cache.get_or_build(replace(KEY, network="vae_encoder"), Builder())
    broken.file("model.plan").write_bytes(b"x")
    assert cli(["engines", "list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "3 entries" in listing and listing.count("UNUSABLE") == 1 and "rows=1-2-2" in listing
    assert cli(["engines", "clear", "--kind", "onnx", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 onnx entries" in capsys.readouterr().out
    assert len(cache.entries()) == 2
    assert cli(["engines", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert cache.entries() == []


# --- issue 32 item 12: two builders of one key finishing together ---------------------------------
RACE_ROUNDS = 60


def race_round(root) -> list[str]:
    """Two threads build KEY into an empty cache and finish their builds at the same moment; each
    then reads the entry it got. Returns what went wrong (nothing when both read one valid entry)."""
    cache = EngineCache(root)
    finished = threading.Barrier(2)
    results: dict[int, tuple[bytes, str | None] | Exception] = {}

    def builder(who: int) -> None:
        def build(folder):
            (folder / "model.plan").write_bytes(b"engine of builder %d" % who)
            finished.wait(timeout=10)
        try:
            entry = cache.get_or_build(KEY, build)
            results[who] = (entry.file("model.plan").read_bytes(), cache.verify(entry))
        except Exception as exc:  # what the user would have seen
            results[who] = exc

    threads = [threading.Thread(target=builder, args=(who,)) for who in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    read = [r for r in results.values() if not isinstance(r, Exception)]
    problems = [f"builder {who}: {type(r).__name__}: {r}" for who, r in results.items() if isinstance(r, Exception)]
    if not problems and (read[0][0] != read[1][0] or read[0][1] or read[1][1]):
        problems.append(f"builders read {read[0]!r} and {read[1]!r} (contents, problem)")
    return problems


def test_two_builders_finishing_together_both_use_one_valid_entry(tmp_path):
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between almost every bytecode, as processes would
    try:
        problems = [p for i in range(RACE_ROUNDS) for p in race_round(tmp_path / f"round-{i}")]
    finally:
        sys.setswitchinterval(interval)
    assert problems == [], f"{len(problems)} problems in {RACE_ROUNDS} rounds, first: {problems[0]}"


def test_a_builder_that_checked_before_another_moved_in_keeps_the_others_entry(tmp_path, monkeypatch):
    """The race's schedule made certain: both build, builder 2 finds no entry, builder 1 then moves
    its entry in and reads it, and only then does builder 2 go on. Builder 2 must take builder 1's
    entry, not replace it under builder 1's feet. (With check-and-move under one lock, builder 1
    cannot move in while builder 2 checks: the bounded wait ends and builder 1 takes builder 2's.)"""
    cache = EngineCache(tmp_path)
    builder_2_checked, builder_1_done = threading.Event(), threading.Event()
    both_built = threading.Barrier(2)
    state = threading.local()
    inspect = EngineCache.inspect

    def inspect_in_that_order(self, key):
        found = inspect(self, key)
        if getattr(state, "who", 0) == 2 and getattr(state, "built", False) and found[0] is None:
            state.built = False
            builder_2_checked.set()
            builder_1_done.wait(timeout=0.5)
        return found

    monkeypatch.setattr(EngineCache, "inspect", inspect_in_that_order)
    read: dict[int, bytes] = {}

    def builder(who: int) -> None:
        state.who = who

        def build(folder):
            (folder / "model.plan").write_bytes(b"engine of builder %d" % who)
            both_built.wait(timeout=10)
            state.built = True
            if who == 1:
                builder_2_checked.wait(timeout=10)

        entry = cache.get_or_build(KEY, build)
        read[who] = entry.file("model.plan").read_bytes()
        if who == 1:
            builder_1_done.set()

    threads = [threading.Thread(target=builder, args=(who,)) for who in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert read[1] == read[2]
    entry = cache.get(KEY)
    assert entry is not None and entry.file("model.plan").read_bytes() == read[1]


def test_a_cache_folder_that_is_a_file_is_one_sentence(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    monkeypatch.setenv("LIVEDIFF_CACHE_DIR", str(a_file))
    assert cli(["engines", "list"]) != 0
    assert capsys.readouterr().err.strip().endswith(f"$LIVEDIFF_CACHE_DIR '{a_file}' is a file; the engine cache "
                                                    f"needs a folder there")
    with pytest.raises(AcceleratorError, match=r"the engine cache folder '.*a-file/sub' cannot be created \(Not a "
                                               r"directory\); set LIVEDIFF_CACHE_DIR or cache_dir to a writable"):
        EngineCache(a_file / "sub").get_or_build(KEY, Builder())
