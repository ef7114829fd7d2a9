"""Joining already-encoded pieces (the job's segment files) into one file by *remuxing* their
packets (no re-encode), adding the input's audio at that moment."""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av

from livediff.app.video.codecs import FFMPEG_ERRORS, AudioMode, short_error
from livediff.app.video.reader import open_input
from livediff.app.video.writer import AudioCarrier, muxer_options
from livediff.errors import InputError

log = logging.getLogger(__name__)


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
        container = open_input(part_path)
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
        except FFMPEG_ERRORS as exc:
            raise InputError(f"{part_path}: cannot be read back ({short_error(exc)})") from exc
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

    def decode_ts(packet_index: int) -> int:
        shifted = packet_index - delay
        return all_pts[shifted] if shifted >= 0 else all_pts[0] - (-shifted) * step

    # pass 2: remux
    template_container = open_input(plan[0][0])
    out = av.open(str(output), mode="w", container_options=muxer_options(output))
    frames = 0
    carrier: AudioCarrier | None = None
    try:
        template = template_container.streams.video[0]
        vstream = out.add_stream_from_template(template)
        vstream.time_base = template.time_base
        if audio_from is not None:
            carrier = AudioCarrier(Path(audio_from), out, audio, audio_until)
        for part_path, shift in plan:
            container = open_input(part_path)
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
            except FFMPEG_ERRORS as exc:
                raise InputError(f"{part_path}: cannot be read back ({short_error(exc)})") from exc
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
