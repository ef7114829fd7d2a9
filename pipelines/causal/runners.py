"""The causal video pipeline on an accelerator (issue 16, item 4): its transformer calls run as
`CausalTransformerFunction` (one chunk's denoising call as a pure function of tensors, the rolling
cache as explicit inputs, the chunk's new keys/values as outputs) by the accelerator's runner.

    load_pipeline(model="tiny-wan-causal", mode="causal-video", accelerator="onnxruntime", ...)

Accelerators (`CAUSAL_ACCELERATORS`: the registry's backends that run mode "causal-video",
`accelerators.registry`):

* eager: `CausalWanTransformer` itself (no function, no graph);
* onnxruntime, openvino: the function exported to ONNX once per resolution, chunk size, cache size and
  text length (all in the graph's `EngineCache` key: the resolution, and the function's `variant()`),
  reused by every later pipeline with the same settings; openvino converts that same graph;
* compile: the function under torch.compile(fullgraph=True, static shapes) — it traces with no graph
  break; on CPU the first chunk compiles for minutes. With CUDA graphs every input is read where it
  lives (`CausalTransformerFunction.state_inputs`): `inputs_for` gives the latents, timestep, rotary
  tables, fill mask and prompt keys/values at the same addresses every call (`graph.FixedInputs`), the
  cache's keys/values are the cache's own tensors, so one capture replays the whole stream, window
  slides and prompt changes included (a new stream, e.g. after `reset`, has a new cache: a new capture);
* tensorrt: the image pipelines' backend (`accelerators.tensorrt_backend`), unchanged: an engine built
  from that same ONNX graph (TensorRT-native ops only; the cache as explicit inputs/outputs) with a
  static profile (one row; chunk tokens, cache slots and text tokens fixed by the resolution and the
  options) and cached under a key naming every input's shape, the precision, the TensorRT version and
  the GPU. It needs CUDA and the `tensorrt` package; without them the pipeline is refused with one
  sentence before any weights load (`accelerators.check_accelerator`).

What stays outside the graph is what `RollingKVCache` does between calls, exactly as for the eager
runner: the ring placement (`stage` the call's new keys/values, `commit` the finished chunk into its
slot), the chunk count and the chunk's frame position (the rotary tables and the fill mask are
inputs, built by `CausalTransformerFunction.inputs_for`). So `GraphCausalTransformer` is a drop-in
`CausalWanTransformer`: same calls, same cache, same `finish_chunk` policy.

The graph takes the prompt as every cross-attention layer's text keys/values, computed once per prompt
on the device by `CausalTransformerFunction.text_inputs` (at `prepare`/`update_prompt` through
`bind_text`, and reused as the same tensors by every call), at the pipeline's real text length (its
tokenizer's padded length, capped at Wan's 512), not the 512 default.
"""
from __future__ import annotations

from livediff.accelerators import registry
from livediff.accelerators.base import AcceleratorOptions, BuildTarget, RowRange
from livediff.errors import ConfigError, InputError
from livediff.network_inputs import NamedRunner
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.graph import WAN_VAE_SCALE_FACTOR, CausalTransformerFunction
from livediff.pipelines.causal.transformer import CausalWanTransformer, timestep_rows

#: accelerators mode "causal-video" runs on (today all of them), as registered when this module loaded
CAUSAL_ACCELERATORS = registry.names(mode="causal-video")


def unsupported_accelerator(name: str) -> str | None:
    """Why mode 'causal-video' refuses accelerator `name` (a sentence naming the supported ones), or None."""
    supported = registry.names(mode="causal-video")
    if name in supported:
        return None
    why = "it does not run the causal transformer" if name in registry.names() else "unknown accelerator"
    return f"{why}; mode 'causal-video' runs on {', '.join(supported)}"


def causal_build_target(config) -> BuildTarget:
    """What a backend builds the causal transformer for: one row per call (one stream), the pipeline's size."""
    import torch

    from livediff.pipelines.models import resolve_dtype

    one = RowRange(1, 1, 1)
    return BuildTarget(device=torch.device(config.device), dtype=resolve_dtype(config.dtype, config.device),
                       height=config.height, width=config.width, stream_rows=one, frame_rows=1, model=config.model)


def check_options(config, options: AcceleratorOptions | dict | None) -> AcceleratorOptions | None:
    """The accelerator options, validated before weights load (None for eager, which takes none)."""
    from livediff.accelerators import check_accelerator

    if config.accelerator == "eager":
        if options:
            raise ConfigError("accelerator_options do not apply to accelerator 'eager'")
        return None
    options = check_accelerator(config.accelerator, causal_build_target(config), options)
    if options.resolution is not None and options.resolution.dynamic:
        raise ConfigError("the causal transformer's graph has a static resolution (its cache size follows from "
                          "it): leave the accelerator option resolution unset")
    return options


def make_causal_backend(config, options: AcceleratorOptions | None, progress=None):
    """The backend that runs the pipeline's transformer function (None for eager)."""
    from livediff.accelerators import make_backend

    if config.accelerator == "eager":
        return None
    return make_backend(config.accelerator, causal_build_target(config), options, progress)


class GraphCausalTransformer(CausalWanTransformer):
    """`CausalWanTransformer` whose calls run `CausalTransformerFunction` through a backend's runner.

    The function is exported/compiled/built by `backend.runner` when this is made (ONNX graphs come
    from the `EngineCache`); each call builds the function's inputs from the cache (`inputs_for`), runs
    the runner and stages the new keys/values in the cache (`stage_outputs`); `finish_chunk` and the
    ring placement are the eager runner's.
    """

    def __init__(self, model, config: CausalConfig, backend, text_tokens: int,
                 vae_scale_factor: int = WAN_VAE_SCALE_FACTOR):
        # no CausalWanTransformer.__init__: its causal copy would never run here; the function's copy
        # (weights shared with `model`) serves the eager runner's bookkeeping (cache shapes, the prompt)
        self.function = CausalTransformerFunction(model, config, text_tokens=text_tokens,
                                                  vae_scale_factor=vae_scale_factor).eval()
        function = self.function
        self.use_copy(config, function.model, function.slot, function.layers, function.prompt)
        self.backend = backend
        self.runner = NamedRunner(self.function, backend.runner(self.function))

    def bind_text(self, text):
        self.function.text_inputs(text)
        return self.prompt

    def __call__(self, latents, timestep, text, cache=None):
        if latents.ndim != 5 or latents.shape[2] != self.config.chunk_frames:
            raise InputError(f"a chunk is (batch, channels, {self.config.chunk_frames}, height, width) latents, got "
                             f"{tuple(latents.shape)}")
        if cache is None:  # the chunk alone at frame 0: an empty cache attends to nothing
            cache = self.new_cache(latents.shape[0], *latents.shape[-2:], dtype=latents.dtype, device=latents.device)
        # a number is written into the timestep buffer as it is (no tensor made on the host)
        t = timestep if isinstance(timestep, (int, float)) else timestep_rows(timestep, latents.shape[0],
                                                                              latents.device)
        outputs = self.runner(self.function.inputs_for(latents, t, text, cache))
        return self.function.stage_outputs(cache, outputs)


def causal_transformer(model, config: CausalConfig, backend=None, text_tokens: int | None = None,
                       vae_scale_factor: int = WAN_VAE_SCALE_FACTOR) -> CausalWanTransformer:
    """The pipeline's transformer runner: eager without a backend, else the function on the backend."""
    if backend is None:
        return CausalWanTransformer(model, config)
    return GraphCausalTransformer(model, config, backend, text_tokens, vae_scale_factor)
