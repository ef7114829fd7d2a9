"""Hand each camera frame to the decoder as soon as its last packet is in, not one frame later.

aiortc's video jitter buffer knows a frame is complete only when the first packet of the *next*
frame arrives, so every camera frame waits a whole frame interval (33 ms at 30 fps) before it is
decoded. The sender marks a frame's last packet with the RTP marker bit (RFC 7741 for VP8, RFC 6184
for H.264): `MarkerJitterBuffer` hands over a frame whose packets are all in when that packet comes.

It replaces the buffer inside aiortc's `RTCRtpReceiver`, a private attribute: `install` says whether
that worked (the tests check it does with the aiortc this project installs), and without it frames
only arrive one interval later.
"""
from __future__ import annotations

import logging

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

log = logging.getLogger(__name__)

_BUFFER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, plus: a frame is handed over when its marker packet arrives."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is None and packet.marker:
            frame = self._complete_frame(packet)
        return pli, frame

    def _complete_frame(self, last: RtpPacket) -> JitterFrame | None:
        """The frame ending with `last`, if every packet from the oldest held one to it is in and of
        that frame (otherwise the base class hands it over later, or drops it as damaged)."""
        if self._origin is None:
            return None
        count = uint16_add(last.sequence_number, -self._origin) + 1
        if count > self.capacity:
            return None
        packets = [self._packets[(self._origin + i) % self.capacity] for i in range(count)]
        if any(p is None or p.timestamp != last.timestamp for p in packets):
            return None
        self.remove(count)
        return JitterFrame(data=b"".join(p._data for p in packets), timestamp=last.timestamp)


def install(receiver: RTCRtpReceiver) -> bool:
    """Give a video receiver the marker-aware buffer (before its first packet); False if this aiortc
    keeps its buffer elsewhere (frames then wait one interval longer, nothing else changes)."""
    current = getattr(receiver, _BUFFER_ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer) or not hasattr(current, "_packets"):
        log.warning("aiortc's receiver has no jitter buffer where livediff expects it: "
                    "camera frames reach the model one frame interval later")
        return False
    setattr(receiver, _BUFFER_ATTRIBUTE, MarkerJitterBuffer(capacity=current.capacity, is_video=True))
    return True
