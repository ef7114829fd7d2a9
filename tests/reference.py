"""What the diffusers parity tests share: diffusers' own scheduler pinned to a stream's timesteps."""
from __future__ import annotations

from diffusers import LCMScheduler


def scheduler_on_stream_timesteps(pipe) -> LCMScheduler:
    """An LCM scheduler like `pipe`'s whose `set_timesteps` (whatever step count diffusers' pipeline
    asks for) gives the stream's own timesteps, so both denoise at the same noise levels."""
    scheduler = LCMScheduler.from_config(pipe.models.scheduler.config)
    set_timesteps = scheduler.set_timesteps
    ours = [int(t) for t in pipe.schedule.timesteps]
    scheduler.set_timesteps = lambda num_inference_steps=None, device=None, **_: set_timesteps(device=device,
                                                                                               timesteps=ours)
    return scheduler
