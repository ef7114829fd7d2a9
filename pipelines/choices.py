"""The names a user chooses between, importable without torch: the CLI lists them in `--help`,
which must answer at once rather than after loading torch and diffusers."""
from __future__ import annotations

MODES: tuple[str, ...] = ("img2img", "txt2img", "video", "causal-video")
CFG_TYPES: tuple[str, ...] = ("none", "full", "self", "initialize")
#: torch dtypes a pipeline runs in (float64: reference checks on the CPU)
DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")
#: most sessions one network run may carry (`pipelines.batching`, the UI's --max-batch)
MAX_SESSIONS = 64
