"""Peak device memory while a model loads (issue 26, defect 6), counted without a GPU.

The full-size SDXL-Turbo layout (`sdxl-turbo-random`: UNet, VAE, both text encoders) is built on the
`meta` device and given uninitialised host storage (`to_empty`: untouched pages cost no memory), then
placed on `meta` (the device stand-in) in float16 two ways, with `DeviceTraffic` counting the bytes
live there: moving each network and then casting it (livediff before issue 26), and
`placement.place_network` (each weight cast on its way). SDXL's own VAE stays float32 in both.

    python benchmarks/load_memory.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.device_traffic import DeviceTraffic  # noqa: E402
from livediff.pipelines.models import ModelBundle, vae_needs_float32  # noqa: E402
from livediff.pipelines.placement import place_network  # noqa: E402
from livediff.pipelines.presets import build_preset  # noqa: E402

PRESET = "sdxl-turbo-random"
NETWORKS = ("unet", "vae", "text_encoder", "text_encoder_2")


def host_bundle() -> ModelBundle:
    with torch.device("meta"):
        components = build_preset(PRESET)
    for name in NETWORKS:
        components[name] = components[name].to_empty(device="cpu")
    return ModelBundle(name=PRESET, **{k: components[k] for k in (*NETWORKS, "tokenizer", "scheduler")})


def move_then_cast(net: torch.nn.Module, dtype: torch.dtype) -> None:
    net.to(device="meta")
    net.to(dtype=dtype)


def peak_bytes(place) -> tuple[int, int]:
    """(peak, final) bytes on the device for loading the bundle with `place(net, dtype)`."""
    bundle = host_bundle()
    with DeviceTraffic("meta") as traffic:
        for name in NETWORKS:
            net = getattr(bundle, name)
            place(net, torch.float32 if net is bundle.vae and vae_needs_float32(bundle, torch.float16)
                  else torch.float16)
    return traffic.peak, traffic.live


def main() -> int:
    rows = {"move, then cast (before)": peak_bytes(move_then_cast),
            "cast on the way (place_network)": peak_bytes(lambda net, dtype: place_network(net, "meta", dtype))}
    print(f"{PRESET} in float16 (VAE float32), bytes on the device during the load\n")
    print("| load | peak GB | loaded GB | peak / loaded |\n|---|---|---|---|")
    for name, (peak, final) in rows.items():
        print(f"| {name} | {peak / 1e9:.2f} | {final / 1e9:.2f} | {peak / final:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
