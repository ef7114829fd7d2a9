"""`compile` across live setting changes: every variant of the banked UNet (token merging, fusion,
bank size) and every row count (CFG mode, warm-up) is compiled on a code object of its own, so no
setting change ever spends torch's recompile budget; variants are reused while recent and released
when nothing uses them. Traced with dynamo's `CompileCounter` backend (same guards as inductor, no
code generation)."""
from __future__ import annotations

import gc
import weakref
from dataclasses import replace
from typing import Any

import torch
from torch._dynamo.testing import CompileCounter

from livediff import load_pipeline
from livediff.accelerators.compiled import CompileBackend
from livediff.networks import TensorFunction
from livediff.pipelines.runners import build_target

SIZE = 64
BANK = dict(cache_interval=4, max_frames=1, merge=True, fusion_threshold=0.98, fusion_strength=0.8)


class CountingCompiler:
    """`CompileCounter` that also keeps a weak reference to every graph it is given."""

    def __init__(self):
        self.counter = CompileCounter()
        self.graphs: list[weakref.ref] = []

    def __call__(self, graph, example_inputs):
        self.graphs.append(weakref.ref(graph))
        return self.counter(graph, example_inputs)


def live_changes() -> list[dict]:
    """30 settings of a UI session, each one setting away from the one before: the token-merge
    slider swept as in the report (0 → 0.4) and moved back, then fusion threshold and strength,
    bank size, bank kind (merging or not), the CFG mode (its row count) and the bank off, each moved
    and moved back."""
    settings: dict[str, Any] = dict(bank=BANK, token_merge_ratio=0.0, cfg_type="self")
    changes = []

    def move(**change):
        bank = change.pop("bank", {})
        settings.update(change)
        if bank is None:
            settings["bank"] = None
        elif bank:
            settings["bank"] = {**(settings["bank"] or BANK), **bank}
        changes.append(dict(settings))

    for ratio in (0.1, 0.2, 0.3, 0.4, 0.3, 0.4, 0.3, 0.0):
        move(token_merge_ratio=ratio)
    for bank in (dict(fusion_threshold=0.9), dict(fusion_threshold=0.98), dict(fusion_strength=0.5),
                 dict(fusion_strength=0.8), dict(max_frames=2), dict(max_frames=1), dict(merge=False),
                 dict(merge=True)):
        move(bank=bank)
    for cfg_type in ("full", "self", "initialize", "self"):
        move(cfg_type=cfg_type)
    move(bank=None)
    move(bank=BANK)
    for ratio in (0.2, 0.0, 0.2, 0.0, 0.2, 0.0, 0.2, 0.0):
        move(token_merge_ratio=ratio)
    return changes


class TracedCheaply(TensorFunction):
    """A banked UNet's inputs, outputs, variant and weights with a trivial body: dynamo traces it in
    milliseconds (the tiny UNet takes seconds) and spends the recompile budget the same way, on the
    code object of the compiled function (`forward`, shared by every instance of a class)."""

    def __init__(self, function: TensorFunction):
        super().__init__()
        self.function = function  # its weights identify it (`sharing_key`)
        self.name, self.input_names, self.output_names = function.name, function.input_names, function.output_names

    def variant(self):
        return self.function.variant()

    def state_inputs(self):
        return self.function.state_inputs()

    def adapt_inputs(self, *inputs):
        return self.function.adapt_inputs(*inputs)

    def forward(self, *inputs):
        sample = inputs[0]
        return (sample * 0.5, *(sample.new_zeros(shape) for shape in self.function.output_shapes(inputs)[1:]))


class CheapTraces:
    """The compile backend, given `TracedCheaply` stand-ins of the functions the pipelines ask for."""

    def __init__(self, backend: CompileBackend):
        self.backend, self.name, self.static_rows = backend, backend.name, backend.static_rows

    def runner(self, function):
        return self.backend.runner(TracedCheaply(function))


def test_thirty_live_changes_never_exhaust_the_recompile_budget_and_release_old_variants():
    """Each change builds a new session as the UI does and streams two frames (warm-up and steady
    row counts), with torch's own budget (8 compilations per code object). Before, every variant
    and row count went on one code object: the ninth compilation raised `FailOnRecompileLimitHit`
    (with the real banked UNet: on the fifth token-merge value, as reported)."""
    torch._dynamo.reset()
    base = load_pipeline(model="tiny", mode="video", t_index_list=[20, 40], width=SIZE, height=SIZE, device="cpu",
                         dtype="float32", bank=BANK)
    compiler = CountingCompiler()
    backend = CompileBackend("default", cuda_graphs=False, target=build_target(base.config), compiler=compiler,
                             keep=2)
    base.runners = replace(base.runners, backend=CheapTraces(backend))  # the sessions get their runners there
    changes = live_changes()
    assert len(changes) == 30
    variants = set()
    for i, settings in enumerate(changes):
        session = base.new_session(**settings)  # what the UI does on a bank or token-merge change
        session.prepare(prompt="oil painting", guidance_scale=1.5)
        variants.add(session.banked_unet_runner.function.variant())
        for k in range(2):
            assert session(frame(i + k), output="tensor").shape == (1, 3, SIZE, SIZE)
        assert backend.variants() <= backend.keep + 1  # the recent ones and the session's own
    assert len(variants) >= 8  # token merging, fusion threshold and strength, bank size, bank off
    assert compiler.counter.frame_count > 8 * 2  # well past one code object's budget
    first_variant_graph = compiler.graphs[0]
    del session
    gc.collect()
    assert first_variant_graph() is None  # released once it left the recent variants and its session ended
    assert backend.variants() == backend.keep
    assert sum(graph() is not None for graph in compiler.graphs) <= backend.keep * 3  # their row counts


def frame(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
