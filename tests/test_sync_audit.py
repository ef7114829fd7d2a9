"""No host reads on the hot path: a GPU must never wait for the CPU to look at a tensor mid-frame.

Counted on real CPU runs over steady frames, around the three parts of a frame (encode, the stream
batch with its bank, decode), with the input and output conversions (which cross the host
boundary by definition) left out:
* device→host reads: `.item()`, `bool/float/int(t)`, `.tolist()`, `.cpu()`, `.numpy()`,
  `torch.equal`, and at the operator level `_local_scalar_dense`, `nonzero`, `is_nonzero`,
  `masked_select` (boolean-mask indexing);
* host→device copies: tensors made from Python or NumPy data (`torch.tensor`, `as_tensor`,
  `from_numpy`).
Budget: 0 per steady frame in every mode; the similarity filter (one read per frame, by design) is off.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from livediff import load_pipeline

SIZE = 64
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
         torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy, torch.equal}
COPIES = {torch.tensor, torch.as_tensor, torch.from_numpy}
SYNC_OPS = {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "equal"}


class HostTraffic(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS or func in COPIES:
            self.seen[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


class SyncOps(TorchDispatchMode):
    def __init__(self, seen: Counter):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNC_OPS:
            self.seen[f"aten.{name}"] += 1
        return func(*args, **(kwargs or {}))


class Audit:
    """Counts host traffic inside the pipeline's encode, denoise and decode while `active`."""

    def __init__(self, pipe):
        self.active = False
        self.traffic = HostTraffic()
        for owner, name in ((pipe, "encode"), (pipe, "denoise"), (pipe.runners, "decode")):
            setattr(owner, name, self._counted(getattr(owner, name)))

    def _counted(self, inner):
        def run(*args, **kwargs):
            if not self.active:
                return inner(*args, **kwargs)
            with self.traffic, SyncOps(self.traffic.seen):
                return inner(*args, **kwargs)

        return run


def frame(i: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i))


def audited(settings: dict, frames: int = 6, warm: int = 3) -> Counter:
    pipe = load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32", **settings)
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.6)
    audit = Audit(pipe)
    count = settings.get("frame_buffer_size", 1)
    txt2img = settings.get("mode") == "txt2img"
    for i in range(warm + frames):
        audit.active = i >= warm
        pipe() if txt2img else pipe([frame(i + k)[0] for k in range(count)] if count > 1 else frame(i))
    return audit.traffic.seen


@pytest.mark.parametrize("cfg_type", ["none", "self", "full", "initialize"])
@pytest.mark.parametrize("frames", [1, 2])
def test_image_stream_reads_nothing_back(cfg_type, frames):
    assert audited(dict(t_index_list=(20, 40), cfg_type=cfg_type, frame_buffer_size=frames)) == Counter()


def test_txt2img_reads_nothing_back():
    assert audited(dict(mode="txt2img", t_index_list=(0, 30), cfg_type="self")) == Counter()


@pytest.mark.parametrize("bank", [
    dict(merge=False, max_frames=2, cache_interval=2),            # FIFO, writing and non-writing frames
    dict(merge=True, max_frames=1, cache_interval=2),             # merged memory
    dict(merge=True, max_frames=2, cache_interval=1, sparse_keep_ratio=0.5),  # motion-guided sparse bank
    dict(merge=False, cache_interval=1, scene_cut_threshold=0.01),  # scene cuts firing on every frame
])
@pytest.mark.parametrize("cfg_type", ["self", "full"])
def test_video_stream_reads_nothing_back(bank, cfg_type):
    assert audited(dict(mode="video", t_index_list=(20, 30, 40), cfg_type=cfg_type, bank=bank)) == Counter()


def test_video_with_token_merging_reads_nothing_back():
    assert audited(dict(mode="video", t_index_list=(20, 40), token_merge_ratio=0.5)) == Counter()


def test_the_audit_sees_a_host_read():
    """The counter itself works: a pipeline that reads a value back is caught."""
    pipe = load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32")
    pipe.prepare(prompt="a")
    audit = Audit(pipe)
    inner = pipe.runners.decode
    pipe.runners.decode = lambda latents: inner(latents) if float(latents.abs().max()) >= 0 else None
    audit = Audit(pipe)
    audit.active = True
    pipe(frame(0))
    assert audit.traffic.seen["__float__"] >= 1 and audit.traffic.seen["aten._local_scalar_dense"] >= 1
