"""How a batch video job writes its outputs: one validated `JobOptions` for one file or many."""
from __future__ import annotations

from dataclasses import dataclass

from livediff.app.video.codecs import AudioMode, Quality, resolve_codec
from livediff.app.video.geometry import ResizeMode
from livediff.errors import ConfigError

#: Frames per segment file: the most a hard kill can lose, and the keyframe spacing floor.
DEFAULT_SEGMENT_FRAMES = 120
#: Input frames re-fed to a fresh processor before the resume point.
DEFAULT_RESUME_WARMUP = 8
#: Output containers the job writes (H.264 + AAC fit all of them).
OUTPUT_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv"})
AUDIO_MODES = ("auto", "copy", "aac", "none")
RESIZE_MODES = ("crop", "stretch")


@dataclass(frozen=True)
class JobOptions:
    """codec: encoder name (None: libx264, or mpeg4 where PyAV lacks it); quality: CRF int for x264
    (default 20) or a bitrate string like "4M"; audio: auto | copy | aac | none; resize: crop |
    stretch (see `geometry`); segment_frames / resume / resume_warmup: see `segments`; overwrite:
    replace existing outputs (each once its new version is finished; without it or resume an
    existing output is an error); progress: tqdm bars on stderr; quiet: no livediff lines on stderr."""

    codec: str | None = None
    quality: Quality = None
    audio: AudioMode = "auto"
    resize: ResizeMode = "crop"
    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    resume: bool = False
    overwrite: bool = False
    resume_warmup: int = DEFAULT_RESUME_WARMUP
    progress: bool = True
    quiet: bool = False

    def __post_init__(self):
        for name in ("segment_frames", "resume_warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} {value!r} must be a whole number")
        if self.segment_frames < 1:
            raise ConfigError(f"segment_frames {self.segment_frames} must be at least 1")
        if self.resume_warmup < 0:
            raise ConfigError(f"resume_warmup {self.resume_warmup} must be 0 or more")
        if self.audio not in AUDIO_MODES:
            raise ConfigError(f"audio mode {self.audio!r} is not one of {', '.join(AUDIO_MODES)}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize mode {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.resume and self.overwrite:
            raise ConfigError("resume keeps finished outputs and overwrite replaces them: choose one")
        resolve_codec(self.codec)
