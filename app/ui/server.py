"""The Gradio Blocks app: Webcam, Image and Video tabs around one shared set of live controls.

Every event passes the current value of every control (`LiveSettings` order) along with its
input, so a handler always has the complete desired state and applies only what changed (see
`settings.py`); controls therefore act live on a running webcam stream without any reload.

Handlers are plain (sync) functions: Gradio runs them in its worker thread pool, off the event
loop, and they serialise their network calls on `Engine.lock`. Events:

* `live_stream` (camera `.stream`, not for API use) and `live_frame` (the same step as a plain
  request, for API clients): one camera frame in, the restyled frame and the meter out;
* `webrtc_start` and `webrtc_settings`: the WebRTC transport's controls (a token for the page's
  offer, then every control change); its frames travel over WebRTC, not through Gradio (`rtc_hub.py`);
* `image`: img2img / txt2img; `video`: a whole file, with a progress bar and temporal metrics.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import asdict, replace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phone-home from offline machines

import gradio as gr  # noqa: E402

from livediff.app.ui.batcher import Superseded  # noqa: E402
from livediff.app.ui import rtc_page  # noqa: E402
from livediff.app.ui.control_preview import (  # noqa: E402
    PREVIEW_EVERY_S, PREVIEW_HEIGHT, ControlPreview, scale_sliders)
from livediff.app.ui.image_tab import CAUSAL_REFUSAL as IMAGE_CAUSAL_REFUSAL  # noqa: E402
from livediff.app.ui.ice import IceServer, bind_ice_to  # noqa: E402
from livediff.app.ui.image_tab import IMAGE_MODES, restyle_image  # noqa: E402
from livediff.app.ui.rtc_hub import RtcHub, offer_route  # noqa: E402
from livediff.app.ui.rtc_stream import Controls  # noqa: E402
from livediff.app.ui.sessions import SessionRegistry  # noqa: E402
from livediff.app.ui.settings import LiveSettings  # noqa: E402
from livediff.app.ui.style import style_controls  # noqa: E402
from livediff.app.ui.video_tab import restyle_video  # noqa: E402
from livediff.app.ui.webcam_tab import LiveFrame, WebcamStream  # noqa: E402
from livediff.errors import LivediffError  # noqa: E402
from livediff.pipelines.choices import CFG_TYPES  # noqa: E402

#: Seconds between camera frames the page sends. Frames sent while the model is busy replace each
#: other (newest wins), so this bounds the age of the frame picked up, not the work done.
DEFAULT_STREAM_EVERY = 0.04
#: Age after which Gradio's cached files (live frames, uploads, outputs) are deleted.
DEFAULT_CACHE_AGE_S = 600
#: Most pages whose Gradio state is kept (oldest dropped first): bounds the pages that never unload (API
#: clients that vanish). Gradio's default is 10,000, about 3 GB of copied page config.
STATE_SESSION_CAPACITY = 500
#: Largest accepted upload.
DEFAULT_MAX_UPLOAD_MB = 200
IMAGE_HEIGHT = 420
#: Model outputs are small (often 512² or less): scale them up to the panel instead of a stamp in its middle.
CSS = "#live-output img, #image-output img { width: 100%; height: 100%; object-fit: contain; }"


def _controls(defaults: LiveSettings, template) -> list[gr.components.Component]:
    """Lay out the live controls; returned in `LiveSettings.names(n, ip_adapter)` order (the order
    handlers get them; n = the server's ControlNets, each with a scale slider; with an IP-Adapter, a
    style picture and its scale).

    The bank and token-merging controls exist only for the V2V stream mode; they stay in the
    inputs (hidden) otherwise so every handler receives the same values in the same order.
    """
    template_config = template.config
    video_mode = template_config.mode == "video"
    # causal-video: guidance and the similarity filter do not apply (`settings.CAUSAL_REFUSALS`): hidden
    image_model = template_config.mode != "causal-video"
    d = defaults
    made = {
        "prompt": gr.Textbox(label="Prompt", value=d.prompt, lines=2, placeholder="a claymation character"),
        "negative_prompt": gr.Textbox(label="Negative prompt", value=d.negative_prompt,
                                      placeholder="blurry, low quality", visible=image_model),
        "strength": gr.Slider(0.02, 1.0, value=d.strength, step=0.01, label="Strength",
                              info="how far from the input the picture may move"),
        "seed": gr.Number(value=d.seed, precision=0, label="Seed"),
    }
    if not image_model:
        gr.Markdown("Causal video: the prompt, strength and seed act live. Guidance, the feature bank, the "
                    "similarity filter, ControlNet and style images do not apply in this mode.",
                    elem_id="causal-note")
    with gr.Accordion("Guidance", open=False, visible=image_model):
        made["guidance_scale"] = gr.Slider(0.0, 10.0, value=d.guidance_scale, step=0.1, label="Guidance scale",
                                           info="<= 1 turns guidance off")
        made["delta"] = gr.Slider(0.0, 2.0, value=d.delta, step=0.05, label="Residual CFG delta")
        made["cfg_type"] = gr.Radio(list(CFG_TYPES), value=d.cfg_type, label="CFG mode")
    with gr.Accordion("Feature bank (temporal consistency)", open=False, visible=video_mode):
        made["bank"] = gr.Checkbox(value=d.bank, label="Feature bank on")
        made["bank_cache_interval"] = gr.Slider(1, 16, value=d.bank_cache_interval, step=1,
                                                label="Bank update interval (frames)")
        made["bank_max_frames"] = gr.Slider(1, 8, value=d.bank_max_frames, step=1, label="Banked frames")
        made["bank_fusion_strength"] = gr.Slider(0.0, 1.0, value=d.bank_fusion_strength, step=0.05,
                                                 label="Feature fusion strength")
        made["token_merge_ratio"] = gr.Slider(0.0, 0.75, value=d.token_merge_ratio, step=0.05,
                                              label="Token merging ratio", info="0 = exact attention")
    with gr.Accordion("Similarity filter", open=False, visible=image_model):
        made["similarity_filter"] = gr.Checkbox(value=d.similarity_filter, label="Skip near-identical frames",
                                                info="reuse the last picture when the camera barely changes")
        made["similarity_threshold"] = gr.Slider(0.5, 0.999, value=d.similarity_threshold, step=0.001,
                                                  label="Similarity threshold")
        made["similarity_max_skip"] = gr.Slider(0, 60, value=d.similarity_max_skip, step=1,
                                                label="Max skipped frames in a row")
    for name, component in made.items():
        component.elem_id = f"ctl-{name}"
    optional = scale_sliders(template_config, d) + style_controls(template, d)
    return [made[name] for name in LiveSettings.names()] + optional


def _named_settings(names: list[str]):
    """Show a `*values` handler to Gradio with one named parameter per setting (`names`), so API
    clients call `/image` with `prompt=...`, `strength=...` instead of `param_4=...`. Gradio calls
    it positionally."""
    def name(handler):
        signature = inspect.signature(handler)
        params = [p for p in signature.parameters.values() if p.kind is not p.VAR_POSITIONAL]
        params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names]
        handler.__signature__ = signature.replace(parameters=params)
        return handler
    return name


def _settings(values, layout: tuple[int, bool]) -> LiveSettings:
    try:
        return LiveSettings.from_values(values, *layout)
    except LivediffError as exc:
        raise gr.Error(str(exc)) from exc


def _stats(live: LiveFrame) -> str:
    text = f"**{live.meter_text()}**"
    if live.notice:
        text += f"\n\n⚠ setting not applied: {live.notice}"
    return text


def forget_gradio_session(demo: gr.Blocks, session_hash: str) -> None:
    """Drop Gradio's state of a page that unloaded: a copy of the whole page's component config (hundreds
    of KB) that Gradio otherwise keeps for an hour in case the page reconnects, up to
    `STATE_SESSION_CAPACITY` pages. Nothing of a closed livediff session can come back (`SessionClosed`),
    so a reconnecting page would find nothing to resume anyway."""
    holder = demo.state_holder
    with holder.lock:
        holder.session_data.pop(session_hash, None)
        holder.time_last_used.pop(session_hash, None)


def build_demo(registry: SessionRegistry, defaults: LiveSettings | None = None,
               stream_every: float = DEFAULT_STREAM_EVERY, restart_after_s: float = 2.0,
               cache_age_s: int = DEFAULT_CACHE_AGE_S, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               ice_servers: tuple[IceServer, ...] = ()) -> gr.Blocks:
    """The app; `defaults` are the controls' initial values (default: what the server's pipeline has);
    a camera pause longer than `restart_after_s` restarts the session's stream (see `webcam_tab.py`).

    Gradio writes every picture it sends (each live frame too) and every upload to its cache folder;
    files older than `cache_age_s` are deleted every `cache_age_s / 4` seconds and all of them when
    the server stops, so a busy server's disk use is bounded. Uploads above `max_upload_mb` are
    refused (the limit is shown on the Video tab). `ice_servers` (STUN/TURN, `ice.py`) serve both ends of
    the Webcam tab's WebRTC connections."""
    engine = registry.engine
    webcam = WebcamStream(registry, restart_after_s)
    hub = RtcHub(registry, webcam, ice_servers)
    defaults = defaults or LiveSettings.for_pipeline(engine.stream_template)
    camera_size = {"width": {"ideal": engine.width}, "height": {"ideal": engine.height}}
    controlnets = len(engine.stream_template.config.controlnet)
    layout = controlnets, getattr(engine.stream_template.models, "ip_adapter", None) is not None  # optional controls
    causal = engine.stream_mode == "causal-video"
    _named = _named_settings(LiveSettings.names(*layout))

    @_named
    def on_frame(request: gr.Request, frame=None, *values):
        if frame is None:
            return None, "waiting for the camera"
        try:
            settings, invalid = LiveSettings.from_values(values, *layout), None
        except LivediffError as exc:
            settings, invalid = None, str(exc)
        try:
            live = webcam.process(request.session_hash, frame, settings)
        except Superseded:  # a newer frame of this tab is on its way: nothing to show for this one
            return gr.skip(), gr.skip()
        except LivediffError as exc:
            raise gr.Error(str(exc)) from exc
        if invalid:
            live = replace(live, notice=invalid)
        # a reused picture is already on the page: sending it again would only re-encode and re-download it
        return (live.image if live.advanced else gr.skip()), _stats(live)

    def on_restart(request: gr.Request):
        webcam.reset(request.session_hash)
        return None, "stream restarted"

    @_named
    def on_image(request: gr.Request, mode="img2img", upload=None, *values):
        try:
            return restyle_image(registry, request.session_hash, mode, upload, _settings(values, layout))
        except LivediffError as exc:
            raise gr.Error(str(exc)) from exc

    @_named
    def on_video(request: gr.Request, progress: gr.Progress = gr.Progress(), source=None, *values):
        def report(done: int, total: int | None) -> None:
            progress((done, total), desc="restyling", unit="frames")

        try:
            result = restyle_video(registry, request.session_hash, source, _settings(values, layout), report)
        except LivediffError as exc:
            raise gr.Error(str(exc)) from exc
        files = [str(result.output), str(result.metrics_json)]
        return str(result.output), files, result.metrics.format_table(), result.summary()

    @_named
    def on_webrtc_start(request: gr.Request, *values) -> str:
        """A one-use token for the page's WebRTC offer; the controls' values apply from the first frame."""
        return hub.open(request.session_hash, Controls(_settings(values, layout)))

    @_named
    def on_webrtc_settings(request: gr.Request, *values) -> None:
        """A control changed: the tab's WebRTC stream (if any) applies the values to its next frame."""
        try:
            controls = Controls(LiveSettings.from_values(values, *layout))
        except LivediffError as exc:  # as with Gradio streaming, the stream goes on and shows why
            controls = Controls(None, str(exc))
        hub.update(request.session_hash, controls)

    preview = (ControlPreview(registry, lambda owner: getattr(hub.streams().get(owner), "session_id", None))
               if controlnets else None)

    def on_control_preview(request: gr.Request):
        """The tab's newest control image (ControlNet servers only), or nothing if it has no new one."""
        picture = preview.latest(request.session_hash)
        return gr.skip() if picture is None else picture

    def on_unload(request: gr.Request):
        hub.close_owner(request.session_hash)
        registry.close(request.session_hash)
        forget_gradio_session(demo, request.session_hash)

    def on_server_stats() -> dict:
        """The operator's view of the live batches (also `livediff ui --stats`)."""
        return {"sessions": len(registry), "webrtc_streams": len(hub.streams()), **asdict(engine.batcher.stats()),
                **{f"nonfinite_{name}": value for name, value in registry.nonfinite()._asdict().items()}}

    with gr.Blocks(title="livediff", delete_cache=(max(1, cache_age_s // 4), cache_age_s)) as demo:
        demo.max_upload_mb = max_upload_mb
        gr.Markdown(f"## livediff — live diffusion\n`{engine.description}`")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                controls = _controls(defaults, engine.stream_template)
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Webcam", id="webcam"):
                        transport = gr.Radio(list(rtc_page.TRANSPORTS), value=rtc_page.WEBRTC, label="Transport",
                                             elem_id="webcam-transport",
                                             info="WebRTC: video codec, newest frame only, lowest latency; "
                                                  "Gradio streaming: one JPEG per frame over Gradio's queue")
                        with gr.Column(visible=True) as rtc_box:
                            gr.HTML(rtc_page.PANEL)
                            with gr.Row():
                                rtc_start = gr.Button("Start", variant="primary", size="sm", elem_id="webrtc-start")
                                rtc_stop = gr.Button("Stop", size="sm", elem_id="webrtc-stop")
                            rtc_token = gr.Textbox(visible=False)
                        with gr.Column(visible=False) as gradio_box:
                            with gr.Row():
                                camera = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy",
                                                  webcam_options=gr.WebcamOptions(
                                                      mirror=True, constraints={"video": camera_size}),
                                                  height=IMAGE_HEIGHT, elem_id="live-camera")
                                live_out = gr.Image(label="Restyled", format="jpeg", interactive=False,
                                                    height=IMAGE_HEIGHT, elem_id="live-output")
                            stats = gr.Markdown("press record on the camera to start", elem_id="live-stats")
                            with gr.Row():
                                restart = gr.Button("Restart stream", size="sm")
                                frame_api = gr.Button(visible=False)
                                stats_api = gr.Button(visible=False)
                        if controlnets:  # both transports: polled from the tab's stream (control_preview.py)
                            control_image = gr.Image(label="Control image (ControlNet 1)", interactive=False,
                                                     format="jpeg", height=PREVIEW_HEIGHT, elem_id="control-preview")
                            gr.Timer(PREVIEW_EVERY_S).tick(
                                on_control_preview, None, control_image,
                                api_name="control_preview", queue=False, show_progress="hidden")
                    with gr.Tab("Image", id="image"):
                        image_mode = gr.Radio(list(IMAGE_MODES), value="img2img", label="Mode")
                        with gr.Row():
                            # a file, not decoded: `restyle_image` checks its size first
                            image_in = gr.Image(label="Input", sources=["upload", "clipboard"], type="filepath",
                                                image_mode=None, elem_id="image-input")
                            image_out = gr.Image(label="Output", format="png", interactive=False,
                                                 elem_id="image-output")
                        image_run = gr.Button("Run", variant="primary")
                        image_info = gr.Markdown(f"⚠ {IMAGE_CAUSAL_REFUSAL}" if causal else "")
                    with gr.Tab("Video", id="video"):
                        with gr.Row():
                            video_in = gr.Video(label=f"Input video (up to {max_upload_mb:g} MB)", sources=["upload"],
                                                elem_id="video-input")
                            video_out = gr.Video(label="Restyled video", interactive=False, elem_id="video-output")
                        video_run = gr.Button("Restyle video", variant="primary")
                        video_info = gr.Markdown("")
                        video_metrics = gr.Code(label="Temporal consistency (livediff eval)", language=None,
                                                interactive=False)
                        video_files = gr.File(label="Download", file_count="multiple", interactive=False)

        camera.stream(on_frame, [camera, *controls], [live_out, stats], stream_every=stream_every,
                      concurrency_limit=None, show_progress="hidden", api_visibility="private")
        frame_api.click(on_frame, [camera, *controls], [live_out, stats], api_name="live_frame",
                        concurrency_limit=None, show_progress="hidden")
        restart.click(on_restart, None, [live_out, stats], api_name="restart_stream", concurrency_limit=None)
        transport.change(None, transport, None, js=rtc_page.SWITCH_JS)
        transport.change(lambda t: (gr.update(visible=t == rtc_page.WEBRTC), gr.update(visible=t != rtc_page.WEBRTC)),
                         transport, [rtc_box, gradio_box], api_visibility="private", queue=False)
        rtc_start.click(on_webrtc_start, controls, rtc_token, api_name="webrtc_start", concurrency_limit=None,
                        show_progress="hidden").success(None, rtc_token, None,
                                                        js=rtc_page.start_js(engine.width, engine.height))
        rtc_stop.click(None, None, None, js=rtc_page.STOP_JS)
        gr.on([control.change for control in controls], on_webrtc_settings, controls, None,
              api_name="webrtc_settings", queue=False, show_progress="hidden", trigger_mode="always_last")
        server_stats = gr.JSON(visible=False)
        stats_api.click(on_server_stats, None, server_stats, api_name="server_stats", concurrency_limit=None,
                        queue=False)
        image_mode.change(lambda mode: gr.update(visible=mode == "img2img"), image_mode, image_in,
                          api_visibility="private", queue=False)
        image_run.click(on_image, [image_mode, image_in, *controls], [image_out, image_info], api_name="image",
                        concurrency_limit=None)
        video_run.click(on_video, [video_in, *controls], [video_out, video_files, video_metrics, video_info],
                        api_name="video", concurrency_limit=1, show_progress_on=[video_out])  # one bar, not four
        demo.unload(on_unload)
    demo.rtc_hub = hub  # `launch` mounts its offer route
    return demo


def launch(registry: SessionRegistry, host: str = "127.0.0.1", port: int = 7860, ice_servers: tuple[IceServer, ...] = (),
           auth: list[tuple[str, str]] | None = None, **options) -> gr.Blocks:
    """Start the server and return once it listens (`demo.block_thread()` waits for it to stop).

    Quiet: Gradio's own start-up lines (its URL, a `share=True` hint livediff has no option for) are
    not livediff's; the caller prints the address once the server really listens. `options` go to
    `build_demo`; `ice_servers` serve both ends of its WebRTC connections (the hub's and the page's);
    `auth`: (user, password) pairs Gradio asks for (`app.ui.auth`), None for an open server."""
    demo = build_demo(registry, ice_servers=ice_servers, **options)
    bind_ice_to(host)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, ssr_mode=False, auth=auth,
                allowed_paths=[str(registry.work_root)], quiet=True, show_error=True,
                css=CSS + rtc_page.css(IMAGE_HEIGHT), head=rtc_page.head(ice_servers),
                app_kwargs={"routes": [offer_route(demo.rtc_hub)]},
                max_file_size=int(demo.max_upload_mb * 1_000_000), state_session_capacity=STATE_SESSION_CAPACITY)
    return demo
