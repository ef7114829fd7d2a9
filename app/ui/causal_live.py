"""Live streams through the causal video pipeline (mode "causal-video"): `livediff webcam` and the UI's Webcam tab.

The causal pipeline returns frames a chunk at a time: a call returns the frames it finished, often none,
then a whole chunk of 4k video frames at once (k = `chunk_frames` latent frames; the stream's first chunk
is 1 + 4(k−1) frames). Shown as they come, the picture would stall for 4k − 1 frames and then jump.
`ChunkPacer` holds the finished frames in a small queue and releases one per captured frame, in order,
a fixed `chunk_delay(pipe)` = 4k − 1 captured frames after its own: from then on every captured frame
shows one restyled frame, the one captured 4k − 1 frames earlier. That is the honest price of a chunk,
and what `delay_text` says next to the meter (the meter's latency in ms is measured from the shown
frame's own capture time, so it includes the wait for the rest of its chunk).

Sessions do not share network runs in this mode (see `webcam_tab.py`): the batcher's rounds are the
image pipelines' UNet calls, a causal chunk runs its own transformer calls over its own K/V cache.
"""
from __future__ import annotations

from collections import deque

CAUSAL_MODE = "causal-video"
#: video frames per latent frame of the Wan VAE (`pipelines.causal.vae.FRAMES_PER_LATENT`, not imported here:
#: this module is read by every live command, causal or not)
FRAMES_PER_LATENT = 4


def is_chunked(pipe) -> bool:
    """True for a pipeline that returns lists of finished frames (mode causal-video)."""
    return getattr(getattr(pipe, "config", None), "mode", None) == CAUSAL_MODE


def nonfinite_count(pipe):
    """The pipeline's count of zeroed non-finite values (`pipelines.nonfinite`), for the meter and the
    stats; None for a chunked causal pipeline, which zeroes none (it has no stream batch)."""
    return None if is_chunked(pipe) else pipe.nonfinite


def chunk_delay(pipe) -> int:
    """Captured frames between a frame's capture and its display through `ChunkPacer`: 4k − 1."""
    return FRAMES_PER_LATENT * pipe.options.chunk_frames - 1


def delay_text(pipe) -> str:
    k = pipe.options.chunk_frames
    return (f"delay: {chunk_delay(pipe)} frames (chunk of {k} latent frame{'s' if k != 1 else ''} = "
            f"{FRAMES_PER_LATENT * k} video frames)")


class ChunkPacer:
    """Releases a chunked pipeline's finished frames one per captured frame, `delay` captures late.

    `push(arrived, finished)` for every captured frame (its capture time and the list the pipeline
    returned for it) gives the (frame, its capture time) to show now, or None while the first chunk
    fills. `drain(finished)` at the end of the stream gives everything still held, in order.
    """

    def __init__(self, delay: int):
        if delay < 0:
            raise ValueError(f"delay {delay} must be >= 0")
        self.delay = delay
        self.reset()

    def reset(self) -> None:
        self._ready: deque = deque()
        self._arrivals: deque[float] = deque()  # capture times of the frames not yet released, in order
        self.captured = 0
        self.released = 0

    def push(self, arrived: float, finished: list) -> tuple[object, float] | None:
        index = self.captured
        self.captured += 1
        self._arrivals.append(arrived)
        self._ready.extend(finished)
        if self._ready and self.released <= index - self.delay:
            self.released += 1
            return self._ready.popleft(), self._arrivals.popleft()
        return None

    def drain(self, finished: list) -> list[tuple[object, float]]:
        self._ready.extend(finished)
        out = []
        while self._ready and self._arrivals:
            out.append((self._ready.popleft(), self._arrivals.popleft()))
            self.released += 1
        return out

    @property
    def held(self) -> int:
        """Finished frames waiting for their turn."""
        return len(self._ready)
