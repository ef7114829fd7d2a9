"""Output checks of the batch video job, made before any model loads: names, folders, and what an
earlier run left (a finished output, an interrupted run's frames)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from livediff.app.output_paths import write_problem
from livediff.app.video.options import OUTPUT_EXTENSIONS, JobOptions
from livediff.app.video.workarea import MANIFEST_NAME, work_dir_for
from livediff.errors import ConfigError


def check_output_file(input_path: Path, output_path: Path) -> None:
    if output_path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise ConfigError(
            f"output {output_path} must end in one of {', '.join(sorted(OUTPUT_EXTENSIONS))} (or be a folder)"
        )
    if output_path.exists() and output_path.is_dir():
        raise ConfigError(f"output {output_path} is a folder; give a file name")
    try:
        same = input_path.exists() and output_path.exists() and os.path.samefile(input_path, output_path)
    except OSError:
        same = False
    if same or input_path.resolve() == output_path.resolve():
        raise ConfigError(f"output {output_path} is the input file; choose another name")


def interrupted_frames(output: Path) -> int:
    """Frames an interrupted run of `output` finished (its manifest's segments), 0 when there is none."""
    manifest = work_dir_for(output) / MANIFEST_NAME
    try:
        segments = json.loads(manifest.read_text()).get("segments", [])
        return sum(int(segment.get("frames", 0)) for segment in segments)
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def check_outputs_may_be_written(outputs: list[Path], options: JobOptions) -> None:
    """Before any model loads: no finished output is replaced unasked, and every folder is writable."""
    existing = [path for path in outputs if path.is_file()]
    if existing and not (options.resume or options.overwrite):
        named = ", ".join(map(str, existing[:3])) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise ConfigError(f"{named} already exist{'s' if len(existing) == 1 else ''}; pass --overwrite to replace "
                          f"{'it' if len(existing) == 1 else 'them'} (each only once its new version is finished) "
                          f"or --resume to keep finished outputs and continue interrupted ones")
    if not (options.resume or options.overwrite):
        for output in outputs:
            done = interrupted_frames(output)
            if done:
                raise ConfigError(f"{output} has an interrupted run with {done} frames done (in "
                                  f"{work_dir_for(output)}); pass --resume to continue it or --overwrite to "
                                  f"start over")
    for folder in dict.fromkeys(path.parent for path in outputs):
        problem = write_problem(folder)
        if problem is not None:
            raise ConfigError(f"cannot write outputs to {folder}: {problem.strerror or problem}")
