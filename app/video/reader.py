"""Reading a video file: validated on open (a corrupt or unreadable file raises
:class:`livediff.errors.InputError` naming it), RGB frames with their presentation timestamps, so
the output can keep the input's exact timing (variable frame rate included)."""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from livediff.app.video.codecs import FFMPEG_ERRORS, short_error
from livediff.errors import InputError

log = logging.getLogger(__name__)


def open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a video file")
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except FFMPEG_ERRORS as exc:
        raise InputError(f"{path}: not a readable video file ({short_error(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream")
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        kind = container.streams.video[0].codec_context.name
        container.close()
        # refused rather than run as a one-frame video: a still image named .mp4 is almost always a mistake
        raise InputError(f"{path}: is a single {kind} image, not a video; restyle images with `livediff img2img`")
    return container


class DecodedFrame:
    """One decoded video frame. ``rgb`` (HxWx3 uint8) is converted on first access, so frames
    that are only skipped (resume) cost a decode but no colour conversion."""

    __slots__ = ("index", "pts", "time", "_frame", "_rgb")

    def __init__(self, index: int, pts: int, time: float, frame: av.VideoFrame):
        self.index = index  #: 0-based position in decode (= presentation) order
        self.pts = pts  #: presentation timestamp in :attr:`VideoReader.time_base` units
        self.time = time  #: presentation time in seconds
        self._frame = frame
        self._rgb: np.ndarray | None = None

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self._frame.to_ndarray(format="rgb24")
            self._frame = None
        return self._rgb


class VideoReader:
    """A video file opened for decoding.

    Opening validates the file: it must exist, be parseable, have a video stream and yield at least
    one decodable frame — otherwise :class:`InputError` names the file. Each call to :meth:`frames`
    decodes from the start with its own demuxer, so it can be called more than once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._container = open_input(self.path)
        try:
            stream = self._container.streams.video[0]
            self.width: int = stream.codec_context.width
            self.height: int = stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            #: frames per second (the stream's average rate); used as the encoder's nominal rate
            self.fps: Fraction = Fraction(rate) if rate else Fraction(25)
            #: time base of the video stream; frame pts are in these units
            self.time_base: Fraction = Fraction(stream.time_base) if stream.time_base else 1 / self.fps
            #: exact frame count from the container index when it has one (MP4/MOV do), else None
            self.frame_count: int | None = stream.frames or None
            duration = None
            if stream.duration is not None and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif self._container.duration:
                duration = self._container.duration / av.time_base
            #: duration of the video stream in seconds when known
            self.duration: float | None = duration
            audio = self._container.streams.audio
            self.has_audio: bool = bool(audio)
            self.audio_codec: str | None = audio[0].codec_context.name if audio else None
            self.video_codec: str = stream.codec_context.name
            self._check_decodable()
        except BaseException:
            self._container.close()
            raise
        if self.width <= 0 or self.height <= 0:
            self.close()
            raise InputError(f"{self.path}: video stream has no picture size")

    def _check_decodable(self) -> None:
        try:
            for frame in self._container.decode(video=0):
                self.width, self.height = frame.width, frame.height
                return
        except FFMPEG_ERRORS as exc:
            raise InputError(f"{self.path}: video cannot be decoded ({short_error(exc)})") from exc
        raise InputError(f"{self.path}: contains no decodable video frames")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height

    @property
    def estimated_frames(self) -> int | None:
        """:attr:`frame_count`, or duration × fps when the container has no index (for progress bars)."""
        if self.frame_count:
            return self.frame_count
        if self.duration:
            return max(1, round(self.duration * float(self.fps)))
        return None

    def frame_ticks(self) -> int:
        """Nominal duration of one frame in time-base ticks (≥ 1)."""
        return max(1, round(1 / (self.fps * self.time_base)))

    def frames(self) -> Iterator[DecodedFrame]:
        """Yield every frame in presentation order with strictly increasing pts.

        Missing pts are synthesised from the frame rate; a non-increasing pts (broken files) is
        nudged forward by one tick so encoders accept it. A decode error mid-file raises
        :class:`InputError` naming the file and the frame index.
        """
        container = open_input(self.path)
        index = 0
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = self.time_base
            step = self.frame_ticks()
            last: int | None = None
            decoder = container.decode(stream)
            while True:
                try:
                    frame = next(decoder)
                except StopIteration:
                    return
                except FFMPEG_ERRORS as exc:
                    raise InputError(f"{self.path}: decoding failed after {index} frames ({short_error(exc)})") from exc
                pts = frame.pts
                if pts is None:
                    pts = 0 if last is None else last + step
                elif last is not None and pts <= last:
                    pts = last + 1
                last = pts
                yield DecodedFrame(index, pts, float(pts * tb), frame)
                index += 1
        finally:
            container.close()

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, {self.width}x{self.height}, fps={self.fps}, "
            f"frames={self.frame_count}, audio={self.audio_codec})"
        )


def count_video_packets(path: str | Path) -> int:
    """Number of video packets (= frames for the codecs we write) by demuxing only — fast.

    Raises :class:`InputError` if the file cannot be opened or demuxed (e.g. a truncated MP4).
    """
    path = Path(path)
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        count = 0
        for packet in container.demux(stream):
            if packet.size:
                count += 1
        return count
    except FFMPEG_ERRORS as exc:
        raise InputError(f"{path}: cannot be read back ({short_error(exc)})") from exc
    finally:
        container.close()
