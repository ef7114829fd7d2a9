"""`GraphCausalTransformer`, the causal transformer on an accelerator (issue 16 gaps 1 and 2).

* it holds one causal copy of the transformer, its function's: no second (eager) copy of the model's
  modules is built next to the graph's;
* every tensor the function reads lives at a fixed address for the whole stream: the latents, the
  timestep, the rotary tables, every text key/value and the cache's keys/values and fill mask keep
  their data pointers over 6 chunks through the sliding window and a prompt change (re-anchor), so a
  CUDA graph captured once can replay them all; a stand-in for that capture (`GraphReplay` with a
  capture that replays the call on the tensors it was captured with, ignoring what later calls pass)
  captures once and still gives the eager runner's predictions and cache.
"""
from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from livediff.accelerators.compiled import GraphReplay
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.presets import TINY_WAN_CAUSAL, build_tiny_wan_causal
from livediff.pipelines.causal.runners import GraphCausalTransformer
from livediff.pipelines.causal.transformer import CausalWanTransformer

BATCH, TEXT, LATENT = 1, 5, 4
CONFIG = CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=2)  # cache_after="final"
CHUNKS, PROMPT_CHANGE = 6, 4  # chunks 0..3 fill the cache and slide the window; chunk 4 is the new sink
TOL = 1e-9


class RecordingBackend:
    """A backend whose runner calls the function as it is and remembers every call's inputs."""

    name = "recording"
    static_rows = True

    def __init__(self, wrap=None):
        self.calls: list[tuple[torch.Tensor, ...]] = []
        self.values: list[tuple[torch.Tensor, ...]] = []  # every call's inputs as they were then
        self.wrap = wrap

    def runner(self, function):
        run = self.wrap(function) if self.wrap else function

        def call(*inputs):
            inputs = function.adapt_inputs(*inputs)
            self.calls.append(inputs)
            self.values.append(tuple(t.clone() for t in inputs))
            return run(*inputs)

        return call


def replayed_capture(fn, inputs, in_place):
    """What a CUDA graph does on replay, eagerly: read the in-place inputs where they were at capture,
    the others from buffers that each replay copies the call's values into."""
    captured = [t if i in in_place else t.clone() for i, t in enumerate(inputs)]

    def replay(*now):
        for i, buffer in enumerate(captured):
            if i not in in_place:
                buffer.copy_(now[i])
        return fn(*captured)

    replay.in_place = in_place
    return replay


def reachable_modules(root, kind: type) -> list:
    """Distinct `kind` modules reachable from `root` through attributes, containers and submodules."""
    seen, found, todo = set(), {}, [root]
    while todo:
        item = todo.pop()
        if id(item) in seen or isinstance(item, (torch.Tensor, str, int, float, type(None))):
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            found[id(item)] = item
        if isinstance(item, dict):
            todo += list(item.values())
        elif isinstance(item, (list, tuple, set)):
            todo += list(item)
        elif hasattr(item, "__dict__"):
            todo += list(vars(item).values())
    return list(found.values())


def texts(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, TEXT, TINY_WAN_CAUSAL["text_dim"], generator=g, dtype=torch.float64)


def drive(causal, cache, seed: int = 3) -> list[torch.Tensor]:
    """6 chunks of 2 denoising calls each (a float timestep, then a tensor one) and a clean pass, the prompt
    changed before chunk 4 the pipeline's way (a new text tensor, the cache re-anchored)."""
    g = torch.Generator().manual_seed(seed)
    text, predictions = texts(1), []
    causal.bind_text(text)
    with torch.no_grad():
        for chunk in range(CHUNKS):
            if chunk == PROMPT_CHANGE:
                text = texts(2)
                causal.bind_text(text)
                cache.reset()
            x = torch.randn(BATCH, TINY_WAN_CAUSAL["in_channels"], 1, LATENT, LATENT, generator=g,
                            dtype=torch.float64)
            for t in (900.0, torch.full((BATCH,), 400.0, dtype=torch.float64)):
                predictions.append(causal(x, t, text, cache))
                x = x - 0.5 * predictions[-1]
            causal.finish_chunk(cache, clean=x, text=text)
    return predictions


def test_the_graph_runner_holds_no_second_copy_of_the_transformer():
    model = build_tiny_wan_causal(seed=0)
    eager = CausalWanTransformer(model, CONFIG)
    graph = GraphCausalTransformer(model, CONFIG, RecordingBackend(), text_tokens=TEXT)
    assert len(reachable_modules(eager, WanTransformer3DModel)) == 1  # the helper finds a copy where there is one
    copies = reachable_modules(graph, WanTransformer3DModel)
    assert copies == [graph.function.model] and graph.model is graph.function.model
    assert graph.slot is graph.function.slot and graph.prompt is graph.function.prompt
    # the one copy shares the model's weights: no parameter memory beyond the model's
    ours = {p.data_ptr() for p in graph.function.parameters()}
    assert ours == {p.data_ptr() for p in model.parameters()}


def test_every_graph_input_keeps_its_address_through_the_window_and_a_prompt_change():
    model = build_tiny_wan_causal(seed=0, dtype=torch.float64)
    backend = RecordingBackend()
    graph = GraphCausalTransformer(model, CONFIG, backend, text_tokens=TEXT)
    cache = graph.new_cache(BATCH, LATENT, LATENT)
    eager = CausalWanTransformer(model, CONFIG)
    eager_cache = eager.new_cache(BATCH, LATENT, LATENT)
    assert max(float((a - b).abs().max()) for a, b in zip(drive(graph, cache), drive(eager, eager_cache))) < TOL
    assert len(backend.calls) == CHUNKS * 3  # two denoising calls and the clean pass per chunk
    first = [t.data_ptr() for t in backend.calls[0]]
    moved = {graph.function.input_names[i] for call in backend.calls for i, t in enumerate(call)
             if t.data_ptr() != first[i]}
    assert moved == set()
    # and their values did change in place: the rotary position and the fill mask from chunk to chunk,
    # the text keys at the prompt change
    names = graph.function.input_names
    changed = {names[i] for i in range(len(names))
               if not torch.equal(backend.values[0][i], backend.values[3][i])}  # chunk 0 vs chunk 1
    assert {"latents", "rotary_cos", "rotary_sin", "cache_filled"} <= changed
    assert not any(name.startswith("text_") for name in changed)
    before, after = backend.values[3 * PROMPT_CHANGE - 1], backend.values[3 * PROMPT_CHANGE]
    assert all(not torch.equal(before[i], after[i]) for i, name in enumerate(names) if name.startswith("text_"))
    assert cache.chunks == CHUNKS - PROMPT_CHANGE and eager_cache.chunks == cache.chunks


def test_a_graph_captured_once_replays_every_later_chunk_like_eager():
    """`GraphReplay` (the compile backend's CUDA-graph bookkeeping) with a capture that replays on the
    captured tensors: one capture, every input read in place, and the eager runner's numbers."""
    model = build_tiny_wan_causal(seed=0, dtype=torch.float64)
    replays = []

    def wrap(function):
        replays.append(GraphReplay(function, function.name, capture=replayed_capture,
                                   state_inputs=function.state_inputs()))
        return replays[-1]

    graph = GraphCausalTransformer(model, CONFIG, RecordingBackend(wrap), text_tokens=TEXT)
    cache = graph.new_cache(BATCH, LATENT, LATENT)
    eager = CausalWanTransformer(model, CONFIG)
    eager_cache = eager.new_cache(BATCH, LATENT, LATENT)
    predictions, expected = drive(graph, cache), drive(eager, eager_cache)
    (replay,) = replays
    (captured,) = replay.graphs.values()
    assert captured.in_place == frozenset(range(len(graph.function.input_names)))
    assert max(float((a - b).abs().max()) for a, b in zip(predictions, expected)) < TOL
    assert all((a.double() - b.double()).abs().max() < TOL for a, b in zip(cache.tensors(), eager_cache.tensors()))
