"""Runner interface, row plans, accelerator validation, CUDA-graph bookkeeping and `compile` on CPU."""
from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

from dataclasses import replace

from livediff.accelerators import AcceleratorOptions, check_accelerator
from livediff.accelerators.compiled import CapturedCall, GraphReplay, signature
from livediff.network_outputs import NetworkOutputs
from livediff.cross_attention import cross_attention_kv
from livediff.networks import stream_networks, text_layout
from livediff.pipelines.runners import build_runners, build_target
from livediff.pipelines.stream import stream_rows
from livediff.pipelines import StreamConfig, load_pipeline, shared_models
from livediff.errors import AcceleratorError, ConfigError

SIZE = 64


def config(**overrides) -> StreamConfig:
    settings = dict(model="tiny", t_index_list=(20, 40), cfg_type="self", width=SIZE, height=SIZE, device="cpu",
                    dtype="float32")
    settings.update(overrides)
    return StreamConfig(**settings)


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- row plans ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_type,expected", [("none", (2, 6, 6)), ("self", (2, 6, 6)), ("full", (2, 12, 12)),
                                               ("initialize", (2, 8, 8))])
def test_row_plan_for_three_steps_two_frames(cfg_type, expected):
    plan = stream_rows(steps=3, frames=2, cfg_type=cfg_type)
    assert (plan.min, plan.opt, plan.max) == expected


@pytest.mark.parametrize("cfg_type", ["none", "self", "full", "initialize"])
@pytest.mark.parametrize("guidance_scale", [1.0, 1.8])
def test_row_plan_covers_every_unet_call_of_a_real_stream(cfg_type, guidance_scale):
    cfg = config(cfg_type=cfg_type, t_index_list=(10, 25, 40), frame_buffer_size=2)
    pipe = load_pipeline(**{k: getattr(cfg, k) for k in ("model", "t_index_list", "cfg_type", "width", "height",
                                                         "device", "dtype", "frame_buffer_size")})
    pipe.prepare(prompt="a", guidance_scale=guidance_scale)
    seen = []
    unet = pipe.runners.unet
    pipe.runners.unet = lambda inputs: seen.append(inputs.rows) or unet(inputs)
    for seed in range(3):
        pipe([image(seed)[0], image(seed + 10)[0]])
    plan = build_target(cfg).stream_rows
    assert all(plan.contains(rows) for rows in seen), (seen, plan)
    if guidance_scale > 1 or cfg_type in ("none", "self"):
        assert seen[-1] == plan.opt  # the steady state is what static backends optimise for


# --- validation -----------------------------------------------------------------------------------
def test_cuda_graphs_requested_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="cuda_graphs=True needs device 'cuda'"):
        load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32", accelerator="compile",
                      accelerator_options={"cuda_graphs": True})


def test_cuda_graphs_is_only_an_option_of_compile():
    with pytest.raises(ConfigError, match="option of accelerator 'compile'"):
        check_accelerator("onnxruntime", build_target(config()), {"cuda_graphs": True})


def test_tensorrt_on_cpu_is_an_accelerator_error():
    with pytest.raises(AcceleratorError, match="needs device 'cuda'"):
        load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32", accelerator="tensorrt")


def test_missing_tensorrt_names_the_extra(monkeypatch):
    from livediff.accelerators.tensorrt_backend import import_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(AcceleratorError, match=r"install livediff\[tensorrt\] on a machine with CUDA"):
        import_tensorrt()


def test_onnxruntime_on_cuda_needs_the_cuda_provider():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(AcceleratorError, match="onnxruntime-gpu"):
        check_accelerator("onnxruntime", replace(build_target(config()), device=torch.device("cuda"),
                                                 dtype=torch.float16))


def test_onnxruntime_refuses_bfloat16():
    with pytest.raises(ConfigError, match="float32 on CPU"):
        check_accelerator("onnxruntime", build_target(config(dtype="bfloat16")))


def test_unknown_accelerator_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="not one of"):
        check_accelerator("directml", build_target(config()))
    with pytest.raises(ConfigError, match="unknown accelerator option"):
        check_accelerator("compile", build_target(config()), {"graphs": True})
    with pytest.raises(ConfigError, match="compile_mode"):
        AcceleratorOptions(compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match="opset"):
        AcceleratorOptions(opset=13)


def test_resolution_range_must_contain_the_pipeline_size():
    with pytest.raises(ConfigError, match="outside the accelerator resolution range"):
        check_accelerator("onnxruntime", build_target(config()), {"resolution": (128, 128, 256, 256)})
    with pytest.raises(ConfigError, match="multiple of 8"):
        AcceleratorOptions(resolution=(60, 64, 128, 128))


# --- runner interface -----------------------------------------------------------------------------
def test_eager_runners_match_the_diffusers_modules_and_wrap_extra_networks():
    cfg = config()
    models = shared_models(cfg.model, cfg.vae, cfg.loras, cfg.device, cfg.dtype)
    runners = build_runners(cfg, models)
    unet = stream_networks(models)["unet"]
    sample, t, *_ = unet.example_inputs(2, SIZE, SIZE, torch.float32, "cpu")
    text = torch.randn(2, 77, models.unet.config.cross_attention_dim)
    with torch.no_grad():
        expected = models.unet(sample, t, encoder_hidden_states=text).sample
    layout = text_layout(models.unet)
    text_kv = dict(zip(layout.input_names(), cross_attention_kv(models.unet, layout, text)))
    predicted = runners.unet({"sample": sample, "timestep": t, **text_kv})
    torch.testing.assert_close(predicted["noise_pred"], expected)
    decoder = runners.runner_for(stream_networks(models)["vae_decoder"])
    latents = runners.encode({"images": image() * 2 - 1})["latents"]
    torch.testing.assert_close(decoder({"latents": latents})["images"], runners.decode({"latents": latents})["images"])


# --- CUDA-graph bookkeeping (capture is injected, so this runs without a GPU) ------------------------
class FakeCapture:
    def __init__(self):
        self.captured = []

    def __call__(self, fn, inputs, in_place):
        self.captured.append(tuple(t.shape for t in inputs))
        return lambda *xs: ("replayed", fn(*xs))


class RerunRecorder:
    """What a CUDA graph does, on the CPU (or meta): `replay` reruns the recorded call on the very
    tensors it was recorded with (static buffers, in-place inputs) and writes the results into the
    recorded outputs, which is where a graph leaves them. Using a graph wrongly (an input not copied
    in, an output read after the next replay) gives wrong numbers here too."""

    def record(self, fn, inputs):
        self.fn, self.inputs = fn, inputs
        self.outputs = fn(*inputs)
        return self.outputs

    def replay(self):
        with _disable_current_modes():  # the graph's own work, not copies
            fresh = self.fn(*self.inputs)
            pairs = zip(self.outputs, fresh) if isinstance(fresh, tuple) else ((self.outputs, fresh),)
            for recorded, new in pairs:
                recorded.copy_(new)


class EmulatedGraph:
    """`GraphReplay`'s capture with the real `CapturedCall` (static buffers, outputs handed out as
    they are) over `RerunRecorder`, counting what it does."""

    def __init__(self):
        self.in_place: list[frozenset[int]] = []
        self.copied: set[int] = set()
        self.replays = 0

    def __call__(self, fn, inputs, in_place):
        self.in_place.append(in_place)
        call = CapturedCall(fn, inputs, in_place, RerunRecorder())
        self.copied |= {i for i, _ in call.copied}

        def replay(*xs):
            self.replays += 1
            return call(*xs)

        return replay


class GraphedRunner:
    """A runner shaped like `CompiledRunner` with CUDA graphs: `GraphReplay` of the eager function
    (capture emulated, `EmulatedGraph`), outputs named after the replay."""

    def __init__(self, function, steady_rows, state_inputs=()):
        self.function = function
        self.capture = EmulatedGraph()
        self.replay = GraphReplay(function, getattr(function, "name", "net"), capture=self.capture,
                                  steady_rows=steady_rows, state_inputs=state_inputs)

    @property
    def replays(self) -> int:
        return self.capture.replays

    @torch.no_grad()
    def __call__(self, *inputs):
        return NetworkOutputs.of(self.function, self.replay(*self.function.adapt_inputs(*inputs)))


def test_graph_replay_captures_on_the_second_call_of_a_shape():
    capture = FakeCapture()
    replay = GraphReplay(lambda x: x * 2, "net", capture=capture)
    x = torch.ones(2, 3)
    assert torch.equal(replay(x), x * 2) and capture.captured == []
    kind, value = replay(x)
    assert kind == "replayed" and torch.equal(value, x * 2) and capture.captured == [(torch.Size([2, 3]),)]
    replay(x)
    assert len(capture.captured) == 1  # replayed, not captured again


def test_graph_replay_recaptures_for_new_rows_or_bank_size_and_evicts_the_oldest():
    capture = FakeCapture()
    replay = GraphReplay(lambda *xs: xs[0], "net", max_graphs=2, capture=capture)
    shapes = [((1, 4), (1, 8)), ((3, 4), (3, 8)), ((3, 4), (3, 16))]  # rows change, then the bank grows
    for shape in shapes:
        tensors = [torch.zeros(s) for s in shape]
        replay(*tensors)
        replay(*tensors)
    assert len(capture.captured) == 3
    assert len(replay.graphs) == 2
    assert signature([torch.zeros(s) for s in shapes[0]]) not in replay.graphs


# --- compile on CPU ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_matches_eager_on_cpu():
    """One img2img stream (1 step, no CFG: every call has 1 row) through torch.compile vs eager."""
    settings = dict(model="tiny", vae="tiny-taesd", t_index_list=[30], cfg_type="none", width=SIZE, height=SIZE,
                    device="cpu", dtype="float32")
    outputs = {}
    for accelerator in ("eager", "compile"):
        pipe = load_pipeline(accelerator=accelerator, **settings)
        pipe.prepare(prompt="oil painting")
        outputs[accelerator] = [pipe(image(seed)) for seed in range(2)]
    assert pipe.runners.name == "compile"
    for eager, compiled in zip(outputs["eager"], outputs["compile"]):
        torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_compile_with_cuda_graphs_matches_eager_on_cuda():
    settings = dict(model="tiny", vae="tiny-taesd", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE,
                    device="cuda", dtype="float16")
    outputs = {}
    for accelerator in ("eager", "compile"):
        pipe = load_pipeline(accelerator=accelerator, **settings)
        pipe.prepare(prompt="oil painting", guidance_scale=1.5)
        outputs[accelerator] = [pipe(image(seed).cuda().half()).float() for seed in range(5)]
    assert pipe.runners.name == "compile+cudagraphs"
    assert len(pipe.runners.unet._call.graphs) == 1  # the steady-state shape, replayed from its second call on
    for eager, compiled in zip(outputs["eager"], outputs["compile"]):
        assert (compiled - eager).abs().max() < 1e-2


@pytest.mark.gpu
def test_banked_unet_through_compile_and_cuda_graphs_matches_eager():
    """The bank as explicit static-shape inputs/outputs lets the whole banked UNet be captured."""
    from livediff.networks import BankedUNetFunction

    pipe = load_pipeline(model="tiny", mode="video", t_index_list=[20, 30, 40], width=SIZE, height=SIZE,
                         device="cuda", dtype="float16")
    function = BankedUNetFunction(pipe.banked_unet, pipe.models.vae_scale_factor).eval()
    runner = build_runners(replace(pipe.config, accelerator="compile"), pipe.models).runner_for(function)
    for seed in range(3):  # eager-compiled, captured, replayed
        torch.manual_seed(seed)
        inputs = function.example_inputs(3, SIZE, SIZE, torch.float16, "cuda")
        with torch.no_grad():
            expected = function(*inputs)
        for got, want in zip(runner(dict(zip(function.input_names, inputs))).values(), expected):
            assert (got.float() - want.float()).abs().max() < 2e-2 * want.float().abs().max()
    assert len(runner.run._call.graphs) == 1


def test_state_inputs_are_read_in_place_and_other_sessions_get_a_copying_graph():
    capture = EmulatedGraph()
    replay = GraphReplay(lambda x, state: x + state, "net", capture=capture, state_inputs=(1,))
    x, mine, theirs = torch.ones(2), torch.zeros(2), torch.full((2,), 10.0)
    replay(x, mine)
    replay(x, mine)  # captured, reading `mine` where it lives
    mine += 1  # the state is updated in place between calls, as the bank is
    assert torch.equal(replay(x, mine), torch.full((2,), 2.0))
    assert torch.equal(replay(x, theirs), torch.full((2,), 11.0))  # another session: a graph that copies
    mine += 1
    assert torch.equal(replay(x, mine), torch.full((2,), 3.0))
    assert capture.in_place == [frozenset({1}), frozenset()]


def test_a_video_stream_through_graph_replay_equals_eager_and_never_copies_its_bank():
    """The banked UNet captured with the bank read in place: same frames as eager, and the only
    bytes copied per replay are the sample, timestep and text K/V (not the bank)."""
    def pipeline():
        pipe = load_pipeline(model="tiny", mode="video", t_index_list=[20, 30, 40], cfg_type="self", width=SIZE,
                             height=SIZE, device="cpu", dtype="float32", bank=dict(cache_interval=1))
        pipe.prepare(prompt="oil painting", guidance_scale=1.3)
        return pipe

    eager, graphed = pipeline(), pipeline()
    named = graphed.banked_unet_runner
    bank_at = graphed.banked_unet.input_names.index(graphed.bank_input_names[0])
    bank = tuple(range(bank_at, len(graphed.banked_unet.input_names)))
    replay = GraphedRunner(named.function, (3,), bank)
    graphed.banked_unet_runner = replace(named, run=replay)
    capture = replay.capture
    for seed in range(6):
        torch.testing.assert_close(graphed(image(seed)), eager(image(seed)), atol=0, rtol=0)
    assert capture.in_place == [frozenset(bank)]
    assert capture.replays >= 3 and capture.copied == set(range(bank_at))


def test_warm_up_row_counts_are_never_captured():
    """After every reset the first call has the warm-up row count: it recurs, but only the steady
    count is worth a graph."""
    capture = FakeCapture()
    replay = GraphReplay(lambda x: x, "net", capture=capture, steady_rows=(4,))
    for _ in range(3):  # three resets: warm-up (2 rows) then steady (4 rows), twice each
        for rows in (2, 4, 4):
            replay(torch.zeros(rows, 3))
    assert capture.captured == [(torch.Size([4, 3]),)]


def test_sessions_share_one_compiled_runner_per_network():
    """Two browser sessions' banked UNets (copies sharing the weights) get one runner, hence one set
    of CUDA graphs, static buffers and pool on a GPU."""
    from livediff.accelerators.compiled import CompileBackend
    from livediff.networks import BankedUNetFunction

    pipe = load_pipeline(model="tiny", mode="video", t_index_list=[20, 30], width=SIZE, height=SIZE,
                         device="cpu", dtype="float32")
    other = pipe.new_session()
    backend = CompileBackend("default", cuda_graphs=False, target=build_target(pipe.config))
    first = backend.runner(BankedUNetFunction(pipe.banked_unet).eval())
    assert backend.runner(BankedUNetFunction(other.banked_unet).eval()) is first
    merged = pipe.new_session(token_merge_ratio=0.5)  # another graph: not shared
    assert backend.runner(BankedUNetFunction(merged.banked_unet).eval()) is not first
