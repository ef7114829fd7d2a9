"""The pipeline-level parity matrix: every configuration a user can pick gives eager's frames on every
backend that runs on this CPU (onnxruntime, openvino), frame for frame.

What is compared: the pictures a user gets (`output="tensor"`, pixels in [0, 1]), over a short stream
that goes through warm-up, at least one bank write, a prompt change and, where the case has one, a
scene cut; with two sessions, both sessions' frames from shared runs (`run_together`).

How the cases were chosen (the coverage argument). A configuration is a point in the product of the
`FACTORS` below. Running every point is impossible (thousands), and most factors act in different
code, where they cannot interact. So the factors are grouped by the code they touch (`GROUPS`):

* stream core (`pipelines.stream`, `rcfg`, `batching`): mode, CFG type, frames per call, sessions;
* feature bank (`pipelines.bank`, `video_pipeline`, the banked UNet's graph): bank kind, fusion,
  token merging, scene cut, and the frames per call and sessions whose rows each write covers;
* bank rows (`BankedUNetCall`, `FeatureBank.rows/update`): whether a bank is on, and the CFG type that
  decides which rows are read and which are skipped when writing (the same code for every bank kind);
* conditioning (`networks.run_unet`, `control`, `ip_adapter`, `prompts`: the UNet's inputs): whether
  ControlNets are on, IP-Adapter, SDXL's added conditioning, and what lays those inputs out per row
  (mode, CFG type, sessions, plain or banked UNet);
* ControlNet count (`networks.run_unet` sums the residuals of each, scaled per row): none, one or two,
  in the plain (img2img) and in the banked UNet (video). A second ControlNet goes through the same layout code as the
  first, so the count is not paired with the row-layout factors (that would only multiply exports).

`CASES` covers every pair of levels of two factors of the same group that a user can combine
(pairwise coverage: a bug needing one specific pair of settings is caught); `uncovered_pairs()`
computes what is missing and `test_parity_matrix_coverage` asserts it is nothing. Levels that do not
apply (the bank in img2img) and combinations the config refuses (a sparse bank with token merging,
ControlNets in txt2img, causal video with anything but its own options) are not pairs a user can pick.
Every case runs on every backend, so each level of each factor is also paired with each backend.

Graphs are shared: every case exports into one cache for the test session (`shared_graph_cache`), so
a graph that several cases use (same network, same baked-in constants) is exported once, and OpenVINO
converts the same ONNX file. Cases were chosen to reuse graphs where coverage allows (one bank size).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from livediff import load_pipeline
from livediff.pipelines.batching import run_together

SIZE = 64
BACKENDS = ("onnxruntime", "openvino")
#: max abs difference of output pixels in [0, 1] between a backend and eager (float32 everywhere)
TOLERANCE = 1e-4

FACTORS: dict[str, tuple] = {
    "mode": ("img2img", "txt2img", "video", "causal-video"),
    "cfg": ("none", "self", "full", "initialize"),
    "frames": (1, 2),
    "sessions": (1, 2),
    "bank": ("off", "fifo", "merged", "sparse"),
    "fusion": (False, True),
    "token_merge": (False, True),
    "scene_cut": (False, True),
    "controlnets": (0, 1, 2),
    "ip_adapter": (False, True),
    "sdxl": (False, True),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "stream core": ("mode", "cfg", "frames", "sessions"),
    "feature bank": ("bank", "fusion", "token_merge", "scene_cut", "frames", "sessions"),
    "bank rows": ("banked", "cfg"),
    "conditioning": ("controlled", "ip_adapter", "sdxl", "mode", "cfg", "sessions", "banked"),
    "controlnet count": ("controlnets", "mode"),
}
BANK_FACTORS = ("bank", "fusion", "token_merge", "scene_cut")
NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Case:
    mode: str = "img2img"
    cfg: str = "self"
    frames: int = 1
    sessions: int = 1
    bank: str = "off"
    fusion: bool = False
    token_merge: bool = False
    scene_cut: bool = False
    controlnets: int = 0
    ip_adapter: bool = False
    sdxl: bool = False
    stream: int = field(default=8, compare=False)  # calls per session

    @property
    def name(self) -> str:
        if self.mode == "causal-video":
            return f"causal-video {self.cfg}"
        parts = [self.mode, self.cfg, *([f"F{self.frames}"] if self.frames > 1 else []),
                 *(["2 sessions"] if self.sessions > 1 else [])]
        if self.mode == "video":
            parts += [f"bank {self.bank}", *(["fusion"] if self.fusion else []),
                      *(["token merging"] if self.token_merge else []), *(["scene cut"] if self.scene_cut else [])]
        parts += [*(["sdxl"] if self.sdxl else []),
                  *([f"{self.controlnets} ControlNet(s)"] if self.controlnets else []),
                  *(["IP-Adapter"] if self.ip_adapter else [])]
        return ", ".join(parts)

    def levels(self) -> dict:
        """factor → level; bank factors are not applicable outside video mode (and fusion and scene
        cuts without a bank), nothing but the stream core in causal video."""
        values = {name: getattr(self, name) for name in FACTORS}
        values["banked"] = self.bank != "off"
        values["controlled"] = self.controlnets > 0
        if self.mode != "video":
            values["banked"] = NOT_APPLICABLE
            values.update({name: NOT_APPLICABLE for name in BANK_FACTORS})
        elif self.bank == "off":
            values.update(fusion=NOT_APPLICABLE, scene_cut=NOT_APPLICABLE)
        if self.mode == "causal-video":
            values.update({name: NOT_APPLICABLE for name in ("controlnets", "controlled", "ip_adapter", "sdxl",
                                                              "banked")})
        return values

    def settings(self) -> dict:
        """`load_pipeline` keyword arguments for this case (without the accelerator)."""
        if self.mode == "causal-video":
            return dict(model="tiny-wan-causal", mode=self.mode, width=SIZE, height=SIZE, device="cpu",
                        dtype="float32", t_index_list=[20, 40], cfg_type=self.cfg, seed=7,
                        causal=dict(chunk_frames=1, sink_chunks=1, window_chunks=1))
        steps = [0, 30] if self.mode == "txt2img" else [20, 30, 40] if self.mode == "video" else [20, 40]
        # TAESD: the VAE graphs are the same function in every case (the KL VAE's graphs are checked in
        # test_onnx_export), so the matrix exports them once per model family
        settings = dict(model="tiny-sdxl" if self.sdxl else "tiny", vae="tiny-taesd", mode=self.mode,
                        t_index_list=steps, cfg_type=self.cfg, frame_buffer_size=self.frames, width=SIZE,
                        height=SIZE, device="cpu", dtype="float32", max_sessions=self.sessions)
        if self.mode == "video":
            settings["token_merge_ratio"] = 0.5 if self.token_merge else 0.0
            settings["bank"] = self.bank_settings()
        if self.controlnets:
            settings["controlnet"] = [dict(model="random", preprocessor="tile", scale=1.0 - 0.3 * i)
                                      for i in range(self.controlnets)]
        if self.ip_adapter:
            settings["ip_adapter"] = dict(model="random", image_encoder="random")
        return settings

    def bank_settings(self) -> dict | bool:
        if self.bank == "off":
            return False
        bank = dict(max_frames=2, cache_interval=2, merge=self.bank == "merged",
                    scene_cut_threshold=0.3 if self.scene_cut else None)
        if self.bank == "sparse":
            bank["sparse_keep_ratio"] = 0.5
        if not self.fusion:
            bank["fusion_strength"] = 0.0
        return bank


def is_refused(levels: dict) -> bool:
    """Combinations the config refuses or that do not exist (see `StreamConfig`)."""
    if levels["mode"] == "causal-video":
        return (levels["cfg"] in ("full", "initialize") or levels["frames"] != 1 or levels["sessions"] != 1)
    if levels["mode"] == "txt2img" and levels["controlnets"]:
        return True
    return levels["bank"] == "sparse" and levels["token_merge"] is True


CASES: tuple[Case, ...] = (
    # chosen by a search for full pairwise coverage with few, light graphs (ControlNets and SDXL cost
    # the most to export: 15 distinct graphs); `uncovered_pairs` checks the result
    Case(cfg='none', frames=2, sessions=2, controlnets=1),
    Case(ip_adapter=True, sdxl=True),
    Case(cfg='full', controlnets=2),
    Case(cfg='initialize', controlnets=2),
    Case(mode='txt2img', cfg='none'),
    Case(mode='txt2img', frames=2, ip_adapter=True, sdxl=True),
    Case(mode='txt2img', cfg='full', sessions=2),
    Case(mode='txt2img', cfg='initialize', ip_adapter=True, sdxl=True),
    Case(mode='video', cfg='initialize', frames=2, token_merge=True, controlnets=1, ip_adapter=True),
    Case(mode='video', cfg='none', sdxl=True),
    Case(mode='video', cfg='none', bank='fifo', scene_cut=True, ip_adapter=True),
    Case(mode='video', cfg='full', frames=2, sessions=2, bank='fifo', fusion=True, token_merge=True, controlnets=1,
         ip_adapter=True, sdxl=True),
    Case(mode='video', cfg='full', bank='merged', fusion=True),
    Case(mode='video', frames=2, sessions=2, bank='merged', token_merge=True, scene_cut=True, controlnets=2),
    Case(mode='video', token_merge=True, controlnets=1, ip_adapter=True),
    Case(mode='video', cfg='initialize', bank='sparse'),
    Case(mode='video', cfg='full', sessions=2, sdxl=True),
    Case(mode='video', cfg='initialize', frames=2, sessions=2, bank='sparse', fusion=True, scene_cut=True),
    Case(mode='causal-video', cfg='none'),
    Case(mode='causal-video'),
)


def required_pairs() -> set[tuple]:
    """Every (factor, level, factor, level) of two factors of one group that some configuration a
    user can pick has."""
    pairs = set()
    for config in itertools.product(*FACTORS.values()):
        levels = Case(**dict(zip(FACTORS, config))).levels()
        if is_refused(levels):
            continue
        pairs |= pairs_of(levels)
    return pairs


def pairs_of(levels: dict) -> set[tuple]:
    pairs = set()
    for members in GROUPS.values():
        for a, b in itertools.combinations(sorted(members), 2):
            if NOT_APPLICABLE not in (levels[a], levels[b]):
                pairs.add((a, levels[a], b, levels[b]))
    return pairs


def uncovered_pairs(cases=CASES) -> set[tuple]:
    covered = set().union(*(pairs_of(case.levels()) for case in cases))
    return required_pairs() - covered


# --- running a case --------------------------------------------------------------------------------

def frame(i: int, cut: bool = False) -> torch.Tensor:
    """A smooth scene panning right by 3 pixels per frame, with a bright square moving across it (so
    consecutive frames are alike and the bank has something to carry); `cut`: another scene altogether."""
    coarse = torch.rand(1, 3, 6, 12, generator=torch.Generator().manual_seed(11 if cut else 3))
    texture = torch.nn.functional.interpolate(coarse, size=(SIZE, 2 * SIZE), mode="bilinear", align_corners=False)
    picture = texture[..., 3 * i:3 * i + SIZE].clone()
    if not cut:
        picture[..., 20:36, 2 * i:2 * i + 16] = 1.0
    return picture


def style_image() -> torch.Tensor:
    return torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(5))


def run_case(case: Case, accelerator: str, cache_dir) -> list[list[torch.Tensor]]:
    """Every frame each session of `case` gives on `accelerator` ("eager" for the reference)."""
    options = None if accelerator == "eager" else dict(cache_dir=cache_dir)
    base = load_pipeline(**case.settings(), accelerator=accelerator, accelerator_options=options)
    if case.mode == "causal-video":
        return [run_causal(base, case.stream)]
    sessions = [base] + [base.new_session(seed=40 + k) for k in range(1, case.sessions)]
    for k, pipe in enumerate(sessions):
        pipe.prepare(prompt=f"oil painting {k}", negative_prompt="blurry", guidance_scale=1.5)
        if case.ip_adapter:
            pipe.set_style_image(style_image())
    outputs: list[list[torch.Tensor]] = [[] for _ in sessions]
    for i in range(case.stream):
        if i == 3:
            for pipe in sessions:
                pipe.update_prompt("watercolor")
        cut = case.scene_cut and i >= case.stream - 2
        inputs = [None if case.mode == "txt2img" else
                  torch.cat([frame(case.frames * i + j, cut) for j in range(case.frames)]) for _ in sessions]
        if case.sessions == 1:
            results = [sessions[0](inputs[0], output="tensor") if inputs[0] is not None
                       else sessions[0](output="tensor")]
        else:
            paths = [pipe.frame_calls(x, output="tensor") for pipe, x in zip(sessions, inputs)]
            results = [outcome.get() for outcome in run_together(paths)]
        for k, result in enumerate(results):
            outputs[k] += list(result) if isinstance(result, list) else [result]
    if case.scene_cut:  # one cut where the scene changes (a cut at every frame would empty the bank)
        assert int(sessions[0].scene_cuts) == 1, f"{int(sessions[0].scene_cuts)} scene cuts, not the one made"
    return outputs


def run_causal(pipe, chunks: int) -> list[torch.Tensor]:
    from media import clip_frame

    pipe.prepare(prompt="claymation")
    outputs: list[torch.Tensor] = []
    frames = 1 + 4 * (chunks - 1)  # Wan's VAE: the first frame, then 4 frames per latent frame
    for i in range(frames):
        if i == frames // 2:
            pipe.update_prompt("watercolor")
        outputs += pipe(clip_frame(i, SIZE, SIZE), output="tensor")
    return outputs + list(pipe.flush())


def largest_difference(expected: list[list[torch.Tensor]], actual: list[list[torch.Tensor]]) -> float:
    assert [len(s) for s in actual] == [len(s) for s in expected] and expected[0], "frame counts differ"
    return max(float((a - e).abs().max()) for es, acts in zip(expected, actual) for e, a in zip(es, acts))


def check_case(case: Case, cache_dir) -> None:
    """`case` on every backend gives eager's frames (the matrix's assertion, shared by its files); the
    graphs it ran have only ops TensorRT parses natively; with a bank, the comparison is shown to be
    sensitive to the bank (a graph ignoring it would differ from eager by far more than the tolerance)."""
    from dataclasses import replace

    expected = run_case(case, "eager", None)
    differences = {backend: largest_difference(expected, run_case(case, backend, cache_dir)) for backend in BACKENDS}
    assert max(differences.values()) < TOLERANCE, f"{case.name}: largest pixel difference from eager {differences}"
    assert graph_op_problems(cache_dir) == {}
    if case.mode == "video" and case.bank != "off":
        unbanked = run_case(replace(case, bank="off", fusion=False, scene_cut=False), "eager", None)
        assert largest_difference(expected, unbanked) > 10 * max(differences.values())


#: graphs whose ops were checked already (each case checks only the ones added since)
_checked: set = set()


def graph_op_problems(cache_dir) -> dict[str, list[str]]:
    """Ops TensorRT 10.0 does not parse natively, per ONNX graph in the cache (every graph any case ran)."""
    import onnx

    from livediff.accelerators.engine_cache import EngineCache
    from livediff.accelerators.tensorrt_ops import unsupported_ops

    problems = {}
    for entry in EngineCache(cache_dir).entries():
        if entry.key.get("kind") == "onnx" and entry.path not in _checked:
            _checked.add(entry.path)
            found = unsupported_ops(onnx.load(str(entry.file("model.onnx")), load_external_data=False))
            if found:
                problems[entry.path.name] = found
    return problems
