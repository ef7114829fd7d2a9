"""Streaming video-to-video: the stream pipeline plus the feature bank and token merging.

    pipe = load_pipeline(model="tiny", mode="video", t_index_list=[30, 35, 40, 45], width=512, height=512,
                         bank=dict(cache_interval=4, max_frames=1, merge=True), token_merge_ratio=0.0, device="cpu")
    pipe.prepare(prompt="claymation", guidance_scale=1.0)
    for frame in frames: out = pipe(frame)

Only the UNet call changes: the stream batch still makes one call per frame, through `BankedUNet`
with the bank slices of each row's stage, and the call's new keys/values/outputs are written to
the `FeatureBank` every `cache_interval` frames (frames counted since the bank was last emptied,
so the first frame after a reset is always banked).

Policies:
* scene cut (a structural change of the input frames above `scene_cut_threshold`): the bank is
  emptied before the frame is denoised, so nothing of the old scene leaks into the new one;
* prompt change (`update_prompt`, `prepare`): the bank is emptied, because banked features of the
  old style would keep pulling the new edit back towards it; the in-flight frames are kept (as in
  the image pipeline), so the change still appears after the usual n−1 frames of latency;
* `reset()`: everything (stream, bank, detectors) is as in a freshly built pipeline.

CFG rows: the unconditional rows of `full` / `initialize` read the bank of their stage (same
frame, same noise level) but only the conditional stream rows write to it.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import torch

from livediff.network_inputs import NetworkInputs
from livediff.pipelines.batching import DENOISE, FramePath, NetworkCall
from livediff.pipelines.bank.config import BankConfig
from livediff.pipelines.bank.feature_bank import FeatureBank
from livediff.pipelines.bank.layout import AttentionLayer, BankLayout, attention_layers, resolve_fusion_blocks
from livediff.pipelines.bank.scene_cut import SceneCutDetector
from livediff.pipelines.bank.sparse import latent_motion
from livediff.pipelines.bank.unet import BankedUNet, RowLayout, call_rows
from livediff.pipelines.config import StreamConfig
from livediff.networks import BankedUNetFunction
from livediff.pipelines.models import ModelBundle
from livediff.pipelines.runners import StreamRunners
from livediff.pipelines.stream import Guidance, stream_rows
from livediff.pipelines.stream_pipeline import StreamPipeline
from livediff.pipelines.token_merge import merge_level, tokens_after_merge


class BankedUNetCall:
    """The UNet function handed to the stream batch for one frame: maps rows to stages, gives each
    row its stage's bank, serves cross-attention K/V from the prompt cache, keeps the new entries."""

    def __init__(self, pipe: "VideoPipeline"):
        self.pipe = pipe
        self.rows: RowLayout | None = None
        self.new: list[torch.Tensor] = []

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> FramePath:
        pipe = self.pipe
        rows = call_rows(*pipe.stream.call_stages, pipe.schedule.frames, sample.shape[0])
        bank = (dict(zip(pipe.bank_input_names, pipe.bank.rows(rows.stages), strict=True))
                if pipe.bank is not None else {})
        constants = {name: c.expand(sample.shape[0], *c.shape[1:]) for name, c in pipe.call_constants().items()}
        call = NetworkCall(DENOISE, pipe.banked_group, pipe.banked_unet_runner,
                           NetworkInputs.join({"sample": sample, "timestep": timestep}, inputs, constants, bank),
                           row_unit=pipe.row_unit(stream=True))
        outputs = yield call
        self.rows, self.new = rows, outputs.select(pipe.bank_output_names)
        return outputs["noise_pred"]

    def write_bank(self, bank: FeatureBank, motion: torch.Tensor | None) -> None:
        """Bank the stream rows of the last call (its unconditional CFG rows are not banked)."""
        if self.rows is None or self.rows.present != tuple(range(bank.stages)):
            raise RuntimeError("the last UNet call of a frame must carry every stage")
        bank.update(self.new, motion, skip_rows=self.rows.extra)


class VideoPipeline(StreamPipeline):
    """`StreamPipeline` whose denoiser call carries the feature bank (see the module docstring).

    Attributes worth reading: `bank` (None when off), `banked_unet` (the pure-function UNet) and
    `banked_unet_runner` (it, run by the pipeline's backend),
    `scene_cuts` (how many cuts reset the bank).
    """

    def __init__(self, config: StreamConfig, models: ModelBundle, runners: StreamRunners):
        self.bank_config: BankConfig | None = config.bank or None
        layers = attention_layers(models.unet)
        self.fusion_blocks = (resolve_fusion_blocks(layers, self.bank_config.fusion_blocks)
                              if self.bank_config else ())
        scale = models.vae_scale_factor
        layout = self._layout(layers, (config.height // scale, config.width // scale), config.token_merge_ratio)
        fusion = ((self.bank_config.fusion_threshold, self.bank_config.fusion_strength) if self.bank_config
                  else (2.0, 0.0))
        self.banked_unet = BankedUNet(models.unet, layout, config.token_merge_ratio, *fusion, models.controlnets,
                                      models.image_prompt_layout)
        function = BankedUNetFunction(self.banked_unet, scale).eval()
        self.banked_unet_runner = runners.runner_for(function)
        #: the bank's inputs and its new entries among the banked UNet's outputs, in the layout's order
        self.bank_input_names = tuple(name for name, _ in layout.input_shapes(1))
        self.bank_output_names = tuple(name for name, _ in layout.output_shapes(1))
        #: sessions whose banked UNets compute the same function share UNet runs (`pipelines.batching`)
        self.banked_group = ("banked_unet", id(runners.backend), id(models.unet), function.variant())
        threshold = self.bank_config.scene_cut_threshold if self.bank_config else None
        self.scene_cut = SceneCutDetector(threshold) if threshold is not None else None
        super().__init__(config, models, runners)

    def _layout(self, layers: list[AttentionLayer], latent_hw: tuple[int, int], ratio: float) -> BankLayout:
        cfg = self.bank_config
        if cfg is None:
            return BankLayout.empty()
        level = merge_level(layers)

        def tokens(layer: AttentionLayer, grid: tuple[int, int]) -> int:
            return tokens_after_merge(grid, ratio) if layer.level == level else grid[0] * grid[1]

        return BankLayout.build(layers, latent_hw, cfg.max_frames, cfg.sparse_keep_ratio, self.fusion_blocks, tokens)

    def _build_stream(self) -> None:
        """A new stream (new stages, or a reset) starts with an empty bank sized for its stages."""
        super()._build_stream()
        cfg = self.bank_config
        steps, frames = self.schedule.steps, self.schedule.frames
        steady = call_rows(0, steps, frames, stream_rows(steps, frames, self.settings.cfg_type).max)
        self.bank = (FeatureBank(self.banked_unet.layout, cfg, steps, self.device, self.dtype, steady)
                     if cfg else None)
        self._motion: deque[torch.Tensor] = deque(maxlen=self.schedule.steps)
        self._previous_latents: torch.Tensor | None = None
        self._frames_since_bank_reset = 0
        #: scene cuts seen since the stream started, a device tensor (reading it waits for the device)
        self.scene_cuts = torch.zeros((), dtype=torch.long, device=self.device)
        if self.scene_cut is not None:
            self.scene_cut.reset()

    def stream_state(self) -> dict[str, Any]:
        """`StreamPipeline.stream_state` plus the bank, the motion history, the frames counted since
        the bank was emptied (they decide which frames are banked) and the scene-cut detector."""
        state = super().stream_state()
        state["video"] = {
            "bank": self.bank.state() if self.bank is not None else None,
            "motion": [m.clone() for m in self._motion],
            "previous_latents": None if self._previous_latents is None else self._previous_latents.clone(),
            "frames_since_bank_reset": self._frames_since_bank_reset,
            "scene_cuts": self.scene_cuts.clone(),
            "scene_cut": self.scene_cut.state() if self.scene_cut is not None else None,
        }
        return state

    def load_stream_state(self, state: Mapping[str, Any]) -> None:
        super().load_stream_state(state)
        video = state["video"]
        if self.bank is not None:
            self.bank.load_state(video["bank"])
        self._motion.clear()
        self._motion.extend(m.to(self.device) for m in video["motion"])
        previous = video["previous_latents"]
        self._previous_latents = None if previous is None else previous.to(self.device)
        self._frames_since_bank_reset = video["frames_since_bank_reset"]
        self.scene_cuts = video["scene_cuts"].to(self.device)
        if self.scene_cut is not None:
            self.scene_cut.load_state(video["scene_cut"])

    def _state_key(self) -> dict[str, Any]:
        return {**super()._state_key(), "bank": repr(self.bank_config), "token_merge_ratio": self.config.token_merge_ratio}

    def _forget_bank(self) -> None:
        if self.bank is not None:
            self.bank.reset()
        self._frames_since_bank_reset = 0

    def prepare(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.2,
                delta: float = 1.0) -> None:
        super().prepare(prompt, negative_prompt, guidance_scale, delta)
        self._forget_bank()

    def update_prompt(self, prompt: str, negative_prompt: str | None = None) -> None:
        """New prompt: new text embeddings and their cross-attention K/V, and an empty bank."""
        super().update_prompt(prompt, negative_prompt)
        self._forget_bank()

    def encode(self, images: torch.Tensor) -> FramePath:
        """A scene cut empties the bank on the device, before the new scene is denoised: no host
        branch, so the frame never waits for the GPU to say whether there was a cut."""
        if self.scene_cut is not None:
            cut = self.scene_cut(images)
            self.scene_cuts += cut.long()
            if self.bank is not None:
                self.bank.forget_where(cut)
        return (yield from super().encode(images))

    def denoise(self, latents: torch.Tensor, guidance: Guidance, noised: bool = False,
                carried: Mapping[str, torch.Tensor] | None = None) -> FramePath:
        motion = self._track_motion(latents) if self.bank_config is not None and self.bank_config.sparse else None
        call = BankedUNetCall(self)
        finished = yield from self.stream.calls(latents, call, guidance, noised=noised, carried=carried)
        if self.bank is not None and self._frames_since_bank_reset % self.bank_config.cache_interval == 0:
            call.write_bank(self.bank, motion)
        self._frames_since_bank_reset += 1
        return finished

    def _track_motion(self, latents: torch.Tensor) -> torch.Tensor:
        """(stages, F, h, w) motion of the frames the rows of this call hold: the frame at stage s
        entered s calls ago. The first frame ever has no predecessor and counts as static."""
        previous = self._previous_latents if self._previous_latents is not None else latents[:1]
        sequence = torch.cat([previous, latents])
        self._motion.appendleft(latent_motion(sequence[:-1], sequence[1:]))
        self._previous_latents = latents[-1:].clone()  # the encoder's output: a graph replay overwrites it
        oldest = len(self._motion) - 1
        return torch.stack([self._motion[min(s, oldest)] for s in range(self.schedule.steps)])
