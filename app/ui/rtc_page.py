"""The browser half of the Webcam tab's WebRTC transport: the panel and the script behind it.

The page uses the browser's own `RTCPeerConnection` and `getUserMedia` (no extra front-end
package): it sends the camera track, receives the restyled track into `<video id="webrtc-output">`
and the meter line over a data channel named `meter` into `#webrtc-stats`. Offers are posted once
ICE gathering is complete (no trickle: on the networks a UI server serves, gathering takes
milliseconds). Any failure stops the stream and says so in `#webrtc-status`, with the way out (the
Gradio streaming transport): the page never falls back on its own.

Element ids are stable; tests and `benchmarks/webcam_latency.py` use them.
"""
from __future__ import annotations

import json
from typing import Sequence

from livediff.app.ui.ice import IceServer
from livediff.app.ui.rtc_hub import OFFER_PATH

WEBRTC, GRADIO = "WebRTC", "Gradio streaming"
TRANSPORTS = (WEBRTC, GRADIO)
FAILED = "WebRTC failed: {reason}. Choose \"Gradio streaming\" as the transport to stream without WebRTC."

PANEL = """
<div id="webrtc-videos">
  <figure><video id="webrtc-camera" autoplay muted playsinline></video><figcaption>Camera</figcaption></figure>
  <figure><video id="webrtc-output" autoplay muted playsinline></video><figcaption>Restyled</figcaption></figure>
</div>
<p id="webrtc-status" data-state="idle">press Start to stream over WebRTC</p>
<p id="webrtc-stats"></p>
"""

CSS = """
#webrtc-videos { display: flex; gap: 8px; }
#webrtc-videos figure { flex: 1; margin: 0; }
#webrtc-videos video { width: 100%; height: HEIGHTpx; object-fit: contain; background: #111;
                       transform: scaleX(-1); }
#webrtc-status[data-state="error"] { color: #c62828; font-weight: 600; }
#webrtc-stats { font-weight: 600; }
"""

SCRIPT = """
(() => {
  const FAILED = %(failed)s;
  const CONFIGURATION = %(configuration)s;
  const state = { pc: null, camera: null };
  const el = (id) => document.getElementById(id);
  const say = (text, kind) => {
    const status = el('webrtc-status');
    if (status) { status.textContent = text; status.dataset.state = kind; }
  };
  const stop = (text) => {
    const pc = state.pc;
    state.pc = null;
    if (pc) pc.close();
    if (state.camera) state.camera.getTracks().forEach((track) => track.stop());
    state.camera = null;
    for (const id of ['webrtc-camera', 'webrtc-output']) { const video = el(id); if (video) video.srcObject = null; }
    if (text) say(text, 'idle');
  };
  const fail = (reason) => { stop(); say(FAILED.replace('{reason}', reason), 'error'); };
  const gathered = (pc) => new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') resolve(); });
  });
  const start = async (token, width, height) => {
    stop();
    if (!token) return;  // the server refused the settings: Gradio shows why
    if (!window.RTCPeerConnection || !navigator.mediaDevices) {
      return fail('this browser has no WebRTC or camera access (a page served over plain http from another '
                  + 'machine gets no camera: use https or localhost)');
    }
    try {
      say('starting the camera…', 'busy');
      const camera = await navigator.mediaDevices.getUserMedia(
        { audio: false, video: { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } } });
      state.camera = camera;
      el('webrtc-camera').srcObject = camera;
      const pc = new RTCPeerConnection(CONFIGURATION);
      state.pc = pc;
      camera.getVideoTracks().forEach((track) => pc.addTrack(track, camera));
      const meter = pc.createDataChannel('meter');
      meter.onmessage = (event) => { const stats = el('webrtc-stats'); if (stats) stats.textContent = event.data; };
      meter.onclose = () => {  // the server hung up (it stopped, or closed the session)
        if (pc === state.pc) { stop(); say('the server ended the stream; press Start to stream again', 'error'); }
      };
      pc.ontrack = (event) => { el('webrtc-output').srcObject = new MediaStream([event.track]); };
      pc.onconnectionstatechange = () => {
        if (pc !== state.pc) return;
        if (pc.connectionState === 'connected') say('streaming over WebRTC', 'streaming');
        if (pc.connectionState === 'failed') fail('the connection to the server was lost');
      };
      say('connecting…', 'busy');
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const reply = await fetch(new URL(%(path)s.slice(1), window.location.href), {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ token, sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
      });
      const answer = await reply.json().catch(() => ({}));
      if (!reply.ok) throw new Error(answer.error || `the server answered HTTP ${reply.status}`);
      if (pc !== state.pc) return;  // stopped meanwhile
      await pc.setRemoteDescription(answer);
    } catch (err) {
      fail(String((err && err.message) || err).replace(/[.]$/, ''));
    }
  };
  // a closed tab hangs up at once (the server would otherwise wait for ICE consent to expire)
  window.addEventListener('pagehide', () => stop());
  window.livediffWebrtc = { start, stop };
})();
"""


def head(ice_servers: Sequence[IceServer] = ()) -> str:
    """The script for the page's <head> (Gradio's `launch(head=...)`); its peer connections use
    `ice_servers`, the server's own (`RtcHub.ice_servers`)."""
    configuration = {"iceServers": [server.browser_config() for server in ice_servers]}
    return "<script>" + SCRIPT % {"failed": json.dumps(FAILED), "path": json.dumps(OFFER_PATH),
                                  "configuration": json.dumps(configuration).replace("</", "<\\/")} + "</script>"


def css(height: int) -> str:
    return CSS.replace("HEIGHT", str(int(height)))


def start_js(width: int, height: int) -> str:
    """Runs in the page after `webrtc_start` returned the token (the one input)."""
    return f"(token) => {{ window.livediffWebrtc.start(token, {int(width)}, {int(height)}); }}"


STOP_JS = "() => { window.livediffWebrtc.stop('stream stopped'); }"
#: When the transport changes away from WebRTC its stream stops (the two never run at once in a tab).
SWITCH_JS = (f"(transport) => {{ if (transport !== {json.dumps(WEBRTC)}) "
             "window.livediffWebrtc.stop('stream stopped'); }")
