"""The `causal=` setting of `load_pipeline(mode="causal-video")`, validated before any weights load.

    load_pipeline(model="tiny-wan-causal", mode="causal-video",
                  causal=dict(chunk_frames=1, sink_chunks=1, window_chunks=4, flow_shift=5.0))

The transformer's options are `CausalConfig`'s (chunking, sinks, window, which keys/values become
context); `flow_shift` is the shift of the flow-matching sigma table the stages are picked from
(Wan 2.1 and its causal distillations use 5.0 at 480p; 3.0 is Wan's suggestion for smaller videos);
`sampler` is how a chunk goes from one stage to the next (`sampler`: "renoise", the default, is what the
distilled causal checkpoints were trained with; "euler" is the deterministic flow-matching ODE step).
These two are the pipeline's, not the transformer's: they decide the inputs of its calls, not what a
call does, so they are not part of `CausalConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from livediff.errors import ConfigError
from livediff.pipelines import checks
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.sampler import check_sampler

MAX_FLOW_SHIFT = 20.0


@dataclass(frozen=True)
class CausalVideoOptions:
    """chunk_frames, sink_chunks, window_chunks, cache_after, context_timestep: see `CausalConfig`;
    flow_shift: the sigma table's shift in (0, 20]; sampler: "renoise" or "euler" (`sampler`)."""

    chunk_frames: int = 1
    sink_chunks: int = 1
    window_chunks: int = 4
    cache_after: str = "final"
    context_timestep: float = 0.0
    flow_shift: float = 5.0
    sampler: str = "renoise"

    def __post_init__(self):
        self.transformer_config  # validates the transformer's part
        checks.number("causal flow_shift", self.flow_shift, 0.0, MAX_FLOW_SHIFT, low_open=True)
        check_sampler(self.sampler)

    @property
    def transformer_config(self) -> CausalConfig:
        return CausalConfig(chunk_frames=self.chunk_frames, sink_chunks=self.sink_chunks,
                            window_chunks=self.window_chunks, cache_after=self.cache_after,
                            context_timestep=self.context_timestep)

    @classmethod
    def from_setting(cls, value) -> "CausalVideoOptions":
        """None (the defaults), a dict of these options, or an instance."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"causal {value!r} must be a dict of causal-video options "
                              f"({', '.join(f.name for f in fields(cls))})")
        return checks.from_options("causal", cls, value)
