"""Video file decoding and encoding for the batch video job (PyAV only, no diffusion here).

Three building blocks:

* :class:`VideoReader` opens a file, validates it (a corrupt or unreadable file raises
  :class:`livediff.errors.InputError` naming the file) and yields RGB frames together with their
  presentation timestamps, so the output can keep the input's exact timing (variable frame rate
  included).
* :class:`VideoWriter` encodes RGB frames to H.264 (``libx264``) or another codec in ``yuv420p``,
  with the input's frame rate and time base, optionally carrying the audio track of another file.
* :func:`concat_parts` joins already-encoded pieces (the job's segment files) into one file by
  *remuxing* their packets (no re-encode), and adds the input's audio at that moment.

Codec choice: the default is ``libx264`` (present in the PyAV 18 wheels). If a PyAV build lacks it,
the default becomes the built-in ``mpeg4`` encoder (always present); a codec the user *names* and
that is missing is an error, never silently replaced.

Audio: by default the input's audio packets are copied unchanged ("remux": no quality loss, no
CPU cost). If the output container cannot hold that codec (e.g. Vorbis in MP4), the audio is
transcoded to AAC instead. ``audio="aac"`` forces the transcode, ``audio="none"`` drops audio.

Timestamps: video frames keep the input's pts (in the input's time base); audio packets keep
theirs. Nothing is renumbered, so audio/video sync is exactly the input's.
"""
from __future__ import annotations

import io
import logging
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Literal, Sequence

import av
import numpy as np

from livediff.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: File name suffixes treated as video when a folder is scanned.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp"}
)

#: Encoders that take a constant-rate-factor quality (an int, lower = better).
CRF_CODECS = frozenset({"libx264", "libx264rgb", "libx265"})

#: Default CRF: visually near-transparent for restyled content, moderate size.
DEFAULT_CRF = 20

AudioMode = Literal["auto", "copy", "aac", "none"]
Quality = int | str | None

_FFMPEG_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, EOFError, UnicodeDecodeError)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


# --------------------------------------------------------------------------------------------
# codec helpers
# --------------------------------------------------------------------------------------------

def codec_available(name: str) -> bool:
    """Whether this PyAV build can *encode* with codec ``name``."""
    try:
        av.codec.Codec(name, "w")
    except Exception:  # UnknownCodecError, ValueError, ...
        return False
    return True


def default_codec() -> str:
    """``libx264`` when this PyAV build has it (the wheels do), else the built-in ``mpeg4``."""
    return "libx264" if codec_available("libx264") else "mpeg4"


def resolve_codec(codec: str | None) -> str:
    """Return the encoder to use; ``None`` means :func:`default_codec`. A named, missing codec is an error."""
    if codec is None:
        return default_codec()
    if not codec_available(codec):
        raise ConfigError(
            f"video codec {codec!r} is not available in this PyAV build; "
            f"use 'libx264' if present or 'mpeg4' (always built in)"
        )
    if av.codec.Codec(codec, "w").type != "video":
        raise ConfigError(f"{codec!r} is not a video codec")
    return codec


_BITRATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:bps|b)?\s*$")


def parse_bitrate(value: str) -> int:
    """``"800k"`` → 800000, ``"4M"`` → 4000000, ``"2500000"`` → 2500000 (bits per second)."""
    m = _BITRATE_RE.match(value)
    if not m:
        raise ConfigError(f"bitrate {value!r} is not understood; write e.g. '800k' or '4M'")
    number = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if number < 1e4:
        raise ConfigError(f"bitrate {value!r} is below 10k bits/s; write e.g. '800k' or '4M'")
    return int(number)


def encoder_settings(
    codec: str, quality: Quality, width: int, height: int, fps: Fraction
) -> tuple[dict[str, str], int | None]:
    """Translate the user's ``quality`` into encoder options and a bit rate.

    ``quality`` is an int CRF (0–51, lower is better; only for x264/x265), a bitrate string such as
    ``"4M"`` (any codec), or ``None`` for the default: CRF 20 on CRF codecs, otherwise a generous
    0.2 bit per pixel per frame (the ffmpeg default of 200 kbit/s for mpeg4 looks poor).
    """
    options: dict[str, str] = {}
    bit_rate: int | None = None
    if isinstance(quality, bool):
        raise ConfigError(f"quality {quality!r} is not understood; give a CRF int (x264) or a bitrate like '4M'")
    if isinstance(quality, int):
        if codec not in CRF_CODECS:
            raise ConfigError(
                f"quality {quality} is a CRF, which codec {codec!r} does not take; give a bitrate such as '4M'"
            )
        if not 0 <= quality <= 51:
            raise ConfigError(
                f"CRF {quality} is out of range; allowed 0 (lossless) to 51 (worst), default {DEFAULT_CRF}"
            )
        options["crf"] = str(quality)
    elif isinstance(quality, str):
        bit_rate = parse_bitrate(quality)
    elif quality is None:
        if codec in CRF_CODECS:
            options["crf"] = str(DEFAULT_CRF)
        else:
            bit_rate = max(400_000, int(width * height * float(fps) * 0.2))
    else:
        raise ConfigError(f"quality {quality!r} is not understood; give a CRF int (x264) or a bitrate like '4M'")
    return options, bit_rate


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------

def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a video file")
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except _FFMPEG_ERRORS as exc:
        raise InputError(f"{path}: not a readable video file ({_short(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream")
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
        self._container = _open_input(self.path)
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
        except _FFMPEG_ERRORS as exc:
            raise InputError(f"{self.path}: video cannot be decoded ({_short(exc)})") from exc
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
        container = _open_input(self.path)
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
                except _FFMPEG_ERRORS as exc:
                    raise InputError(f"{self.path}: decoding failed after {index} frames ({_short(exc)})") from exc
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
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        count = 0
        for packet in container.demux(stream):
            if packet.size:
                count += 1
        return count
    except _FFMPEG_ERRORS as exc:
        raise InputError(f"{path}: cannot be read back ({_short(exc)})") from exc
    finally:
        container.close()


# --------------------------------------------------------------------------------------------
# audio carried over from a source file
# --------------------------------------------------------------------------------------------

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


class _AudioCarrier:
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
        except _FFMPEG_ERRORS as exc:
            log.warning("%s: audio not copied, cannot open (%s)", source, _short(exc))
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
        except _FFMPEG_ERRORS as exc:
            log.warning("%s: rest of the audio dropped (%s)", self.source, _short(exc))
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
        except _FFMPEG_ERRORS as exc:
            log.warning("%s: audio tail dropped (%s)", self.source, _short(exc))
        finally:
            self.close()

    def finish(self, out: av.container.OutputContainer) -> None:
        self.feed(out, None)

    def close(self) -> None:
        if self._in is not None:
            self._in.close()
            self._in = None


def _container_options(path: Path) -> dict[str, str]:
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
        container_options = _container_options(self.path) if faststart else {}
        try:
            self._out = av.open(str(self.path), mode="w", container_options=container_options)
        except _FFMPEG_ERRORS as exc:
            raise InputError(f"{self.path}: cannot create output file ({_short(exc)})") from exc
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
                _AudioCarrier(Path(audio_from), self._out, audio, audio_until) if audio_from is not None else None
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


# --------------------------------------------------------------------------------------------
# joining parts
# --------------------------------------------------------------------------------------------

def concat_parts(
    parts: Sequence[tuple[str | Path, Fraction]],
    output: str | Path,
    *,
    audio_from: str | Path | None = None,
    audio: AudioMode = "auto",
    audio_until: float | None = None,
) -> int:
    """Join encoded video parts into ``output`` without re-encoding; return the frame count.

    Each part is ``(path, start)``: its video timestamps start at 0 and ``start`` (seconds, an
    exact Fraction) is added back, which restores the input's exact pts (MP4 edit lists round a
    non-zero start to milliseconds, so parts are written from 0). All parts must come from the
    same encoder settings; this is checked.

    Decode timestamps are rebuilt for the whole file: with B-frames the encoder delays decode
    time by a few frames, and a short part (an interrupted segment) has less delay than a full
    one, so naive joining would make dts go backwards. Packet *j* in decode order gets the pts of
    frame *j − D* in presentation order (D = the largest delay of any part), which is what the
    encoder itself does inside one part, keeps every dts ≤ its pts, and keeps frame durations (and
    so the reported frame rate) exact.

    ``audio_from`` adds that file's audio (see :class:`VideoWriter`); ``audio_until`` trims it,
    used when assembling a partial output after an interruption.
    """
    output = Path(output)
    if not parts:
        raise ValueError("concat_parts needs at least one part")
    # pass 1: read timestamps, check every part is readable and compatible
    plan: list[tuple[Path, int]] = []
    all_pts: list[int] = []
    delay = 0
    tb: Fraction | None = None
    signature: tuple[str, bytes] | None = None
    for part_path, start in parts:
        part_path = Path(part_path)
        container = _open_input(part_path)
        try:
            stream = container.streams.video[0]
            sig = (stream.codec_context.name, bytes(stream.codec_context.extradata or b""))
            if signature is None:
                signature, tb = sig, Fraction(stream.time_base)
            elif sig != signature or Fraction(stream.time_base) != tb:
                raise InputError(f"{part_path}: encoded with different settings than the first part; cannot join")
            shift = round(Fraction(start) / tb)
            pts_list, dts_list = [], []
            for packet in container.demux(stream):
                if not packet.size or packet.pts is None:
                    continue
                pts_list.append(packet.pts + shift)
                dts_list.append((packet.dts if packet.dts is not None else packet.pts) + shift)
        except _FFMPEG_ERRORS as exc:
            raise InputError(f"{part_path}: cannot be read back ({_short(exc)})") from exc
        finally:
            container.close()
        if pts_list:
            first = min(pts_list)
            delay = max(delay, sum(1 for d in dts_list if d < first))
            all_pts.extend(pts_list)
        plan.append((part_path, shift))
    all_pts.sort()
    if not all_pts:
        raise InputError(f"{parts[0][0]}: parts contain no video frames")
    step = (all_pts[1] - all_pts[0]) if len(all_pts) > 1 else 1

    def decode_ts(j: int) -> int:
        k = j - delay
        return all_pts[k] if k >= 0 else all_pts[0] - (-k) * step

    # pass 2: remux
    template_container = _open_input(plan[0][0])
    out = av.open(str(output), mode="w", container_options=_container_options(output))
    frames = 0
    carrier: _AudioCarrier | None = None
    try:
        template = template_container.streams.video[0]
        vstream = out.add_stream_from_template(template)
        vstream.time_base = template.time_base
        if audio_from is not None:
            carrier = _AudioCarrier(Path(audio_from), out, audio, audio_until)
        for part_path, shift in plan:
            container = _open_input(part_path)
            try:
                stream = container.streams.video[0]
                for packet in container.demux(stream):
                    if not packet.size or packet.pts is None:
                        continue
                    packet.pts = packet.pts + shift
                    packet.dts = decode_ts(frames)
                    packet.stream = vstream
                    out.mux(packet)
                    frames += 1
                    if carrier is not None:
                        carrier.feed(out, float(packet.dts * tb))
            except _FFMPEG_ERRORS as exc:
                raise InputError(f"{part_path}: cannot be read back ({_short(exc)})") from exc
            finally:
                container.close()
        if carrier is not None:
            carrier.finish(out)
    finally:
        if carrier is not None:
            carrier.close()
        template_container.close()
        out.close()
    return frames
