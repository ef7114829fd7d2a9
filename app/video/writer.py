"""Writing a video file: RGB frames encoded in ``yuv420p`` with the input's frame rate and time
base, optionally carrying the audio track of another file.

Audio: by default the input's audio packets are copied unchanged ("remux": no quality loss, no
CPU cost). If the output container cannot hold that codec (e.g. Vorbis in MP4), the audio is
transcoded to AAC instead. ``audio="aac"`` forces the transcode, ``audio="none"`` drops audio.
Timestamps: video frames keep the input's pts (in the input's time base); audio packets keep
theirs. Nothing is renumbered, so audio/video sync is exactly the input's.
"""
from __future__ import annotations

import io
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from livediff.app.video.codecs import FFMPEG_ERRORS, AudioMode, Quality, encoder_settings, resolve_codec, short_error
from livediff.errors import ConfigError, InputError

log = logging.getLogger(__name__)


_REMUX_CACHE: dict[tuple[str, str, bytes], bool] = {}


def _can_remux(stream: av.audio.stream.AudioStream, format_name: str) -> bool:
    """Whether ``format_name`` accepts ``stream``'s codec as is: try writing a header in memory."""
    ctx = stream.codec_context
    key = (format_name, ctx.name, bytes(ctx.extradata or b""))
    if key not in _REMUX_CACHE:
        ok = True
        try:
            probe = av.open(io.BytesIO(), mode="w", format=format_name)
            try:
                probe.add_stream_from_template(stream)
                probe.start_encoding()
            finally:
                try:
                    probe.close()
                except Exception:
                    pass
        except Exception:
            ok = False
        _REMUX_CACHE[key] = ok
    return _REMUX_CACHE[key]


def _auto_remux(stream: av.audio.stream.AudioStream, format_name: str) -> bool:
    # PCM is accepted by the MP4 muxer but most players (browsers, QuickTime) cannot play it there.
    if stream.codec_context.name.startswith("pcm_") and format_name in ("mp4", "mov", "ipod"):
        return False
    return _can_remux(stream, format_name)


class AudioCarrier:
    """Copies (or transcodes to AAC) the first audio stream of ``source`` into ``out``.

    Must be created before the output's header is written (it adds a stream). :meth:`feed` muxes
    audio up to a given time so the caller can interleave it with video; :meth:`finish` writes the
    rest (up to ``until`` seconds if given, which trims audio to a partial video).
    """

    def __init__(self, source: Path, out: av.container.OutputContainer, mode: AudioMode, until: float | None):
        self.source = source
        self.until = until
        self.active = False
        self._in: av.container.InputContainer | None = None
        self._pending: list[av.Packet] = []
        if mode == "none":
            return
        try:
            self._in = av.open(str(source), mode="r", metadata_errors="ignore")
        except FFMPEG_ERRORS as exc:
            log.warning("%s: audio not copied, cannot open (%s)", source, short_error(exc))
            return
        if not self._in.streams.audio:
            self._in.close()
            self._in = None
            return
        src = self._in.streams.audio[0]
        self._src = src
        remux = mode == "copy" or (mode == "auto" and _auto_remux(src, out.format.name))
        if mode == "copy" and not _can_remux(src, out.format.name):
            self._in.close()
            raise ConfigError(
                f"{source}: audio codec {src.codec_context.name!r} cannot be copied into a "
                f"{out.format.name} file; use audio='auto' or 'aac'"
            )
        self.transcode = not remux
        if remux:
            self._stream = out.add_stream_from_template(src)
        else:
            rate = src.codec_context.sample_rate or 48000
            self._stream = out.add_stream("aac", rate=rate)
            layout = src.codec_context.layout
            # by channel count: a source layout may be "unspecified order" ("1 channels"), which AAC refuses
            self._stream.layout = "mono" if layout is not None and layout.nb_channels == 1 else "stereo"
            self._stream.bit_rate = 128_000
            src.codec_context.thread_type = "AUTO"
        self._packets = self._in.demux(src)
        self.active = True

    def _next_packet(self) -> av.Packet | None:
        if self._pending:
            return self._pending.pop()
        for packet in self._packets:
            if packet.size and (packet.pts is not None or packet.dts is not None):
                return packet
        return None

    def feed(self, out: av.container.OutputContainer, up_to: float | None) -> None:
        """Mux audio whose start time is below ``up_to`` seconds (None: everything)."""
        if not self.active:
            return
        limit = self.until if up_to is None else (up_to if self.until is None else min(up_to, self.until))
        try:
            while True:
                packet = self._next_packet()
                if packet is None:
                    self._flush(out)
                    return
                ts = packet.pts if packet.pts is not None else packet.dts
                t = float(ts * packet.time_base)
                if limit is not None and t >= limit:
                    self._pending.append(packet)
                    if up_to is None or (self.until is not None and t >= self.until):
                        self._flush(out)
                    return
                if self.transcode:
                    for frame in self._src.codec_context.decode(packet):
                        for out_packet in self._stream.encode(frame):
                            out.mux(out_packet)
                else:
                    packet.stream = self._stream
                    out.mux(packet)
        except FFMPEG_ERRORS as exc:
            log.warning("%s: rest of the audio dropped (%s)", self.source, short_error(exc))
            self._flush(out)

    def _flush(self, out: av.container.OutputContainer) -> None:
        if not self.active:
            return
        self.active = False
        try:
            if self.transcode:
                for frame in self._src.codec_context.decode(None):
                    for out_packet in self._stream.encode(frame):
                        out.mux(out_packet)
                for out_packet in self._stream.encode(None):
                    out.mux(out_packet)
        except FFMPEG_ERRORS as exc:
            log.warning("%s: audio tail dropped (%s)", self.source, short_error(exc))
        finally:
            self.close()

    def finish(self, out: av.container.OutputContainer) -> None:
        self.feed(out, None)

    def close(self) -> None:
        if self._in is not None:
            self._in.close()
            self._in = None


def muxer_options(path: Path) -> dict[str, str]:
    # A final MP4/MOV gets its index at the front, so it starts playing before it is fully loaded.
    return {"movflags": "+faststart"} if path.suffix.lower() in {".mp4", ".m4v", ".mov"} else {}


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

class VideoWriter:
    """Encodes RGB frames into a video file (``yuv420p``, so width and height must be even).

    ``fps`` is the nominal rate written in the header; ``time_base`` (default ``1/fps``) is the unit
    of the ``pts`` passed to :meth:`write` — pass the input's time base and the input frames' pts to
    keep the input's timing exactly. With ``audio_from`` the first audio stream of that file is
    carried over (see the module docstring), interleaved with the video as it is written.

    The file is only playable after :meth:`close` (MP4 writes its index last); the batch job relies
    on that by writing short segments, each closed as soon as it is full.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        fps: Fraction | float | int,
        time_base: Fraction | None = None,
        codec: str | None = None,
        quality: Quality = None,
        encoder_options: dict[str, str] | None = None,
        audio_from: str | Path | None = None,
        audio: AudioMode = "auto",
        audio_until: float | None = None,
        faststart: bool = True,
    ):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ConfigError(f"output size {width}x{height} must be positive and even (yuv420p)")
        if audio not in ("auto", "copy", "aac", "none"):
            raise ConfigError(f"audio mode {audio!r} is not one of auto, copy, aac, none")
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
        if self.fps <= 0:
            raise ConfigError(f"fps {fps} must be positive")
        self.time_base = Fraction(time_base) if time_base else 1 / self.fps
        self.codec = resolve_codec(codec)
        self._step = max(1, round(1 / (self.fps * self.time_base)))
        self._last_pts: int | None = None
        self.frames_written = 0
        self.last_end_time: float = 0.0  #: end time (s) of the last written frame: pts + one frame
        options, bit_rate = encoder_settings(self.codec, quality, self.width, self.height, self.fps)
        options.update(encoder_options or {})
        container_options = muxer_options(self.path) if faststart else {}
        try:
            self._out = av.open(str(self.path), mode="w", container_options=container_options)
        except FFMPEG_ERRORS as exc:
            raise InputError(f"{self.path}: cannot create output file ({short_error(exc)})") from exc
        try:
            stream = self._out.add_stream(self.codec, rate=self.fps, options=options)
            stream.width, stream.height = self.width, self.height
            stream.pix_fmt = "yuv420p"
            stream.time_base = self.time_base
            stream.codec_context.time_base = self.time_base
            if bit_rate:
                stream.bit_rate = bit_rate
            self._stream = stream
            self._audio = (
                AudioCarrier(Path(audio_from), self._out, audio, audio_until) if audio_from is not None else None
            )
        except BaseException:
            self._out.close()
            raise
        self._closed = False

    def write(self, rgb: np.ndarray, pts: int | None = None) -> None:
        """Encode one HxWx3 uint8 RGB frame at ``pts`` (time-base units; default: previous + one frame)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.shape != (self.height, self.width, 3):
            got = f"{rgb.shape} {rgb.dtype}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise InputError(f"frame for {self.path.name} must be {self.height}x{self.width}x3 uint8 RGB, got {got}")
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + self._step
        elif self._last_pts is not None and pts <= self._last_pts:
            raise InputError(f"{self.path.name}: pts {pts} does not increase (last {self._last_pts})")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = int(pts)
        frame.time_base = self.time_base
        for packet in self._stream.encode(frame):
            self._out.mux(packet)
        self._last_pts = int(pts)
        self.frames_written += 1
        self.last_end_time = float((pts + self._step) * self.time_base)
        if self._audio is not None:
            self._audio.feed(self._out, float(pts * self.time_base))

    def close(self) -> None:
        """Flush the encoder, write the rest of the audio and the file index. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
            if self._audio is not None:
                self._audio.finish(self._out)
        finally:
            if self._audio is not None:
                self._audio.close()
            self._out.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
