"""Many inputs: files and/or folders → outputs, sequentially with one processor reused, or on Ray."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable

from livediff.app.video.codecs import VIDEO_EXTENSIONS
from livediff.app.video.job import Terminated, emitter, locked_outputs, process_file
from livediff.app.video.output_checks import check_output_file, check_outputs_may_be_written
from livediff.app.video.options import JobOptions
from livediff.app.video.processor import LazyProcessor, ProcessorFactory
from livediff.app.video.results import BatchResult
from livediff.app.video.workarea import partial_path_for
from livediff.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def scan_folder(folder: Path, exclude: Path | None) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files and our own .NAME.livediff work folders
        if exclude is not None:
            absolute = path.resolve()
            if absolute == exclude or exclude in absolute.parents:
                continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(path)
    return found


def plan_outputs(inputs: str | Path | Iterable[str | Path], output: str | Path) -> list[tuple[Path, Path]]:
    """Pair every input video with its output path.

    ``inputs``: files and/or folders (scanned recursively for video suffixes, hidden entries and the
    output folder skipped). One input *file* and an ``output`` with a video suffix → that file.
    Otherwise ``output`` is a folder: each output is ``output/<path relative to its input
    folder>.mp4`` (or ``output/<name>.mp4`` for a file input). A file named explicitly is taken
    whatever its suffix; a missing one is kept so it is reported as failed, not silently dropped.
    Two inputs mapping to one output (``a/x.mp4`` and ``b/x.mov``) is a :class:`ConfigError`.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    sources = [Path(p) for p in inputs]
    if not sources:
        raise ConfigError("no input given; pass video files or folders")
    output = Path(output)
    single_file = len(sources) == 1 and not sources[0].is_dir()
    if single_file and output.suffix and not output.is_dir():
        check_output_file(sources[0], output)
        return [(sources[0], output)]
    if output.suffix.lower() in VIDEO_EXTENSIONS and not output.is_dir():
        folders = [s for s in sources if s.is_dir()]
        given = (f"{folders[0]}/ is a folder" if folders else f"{len(sources)} inputs were given")
        raise ConfigError(f"{given}: -o must be a folder too (e.g. {output.with_suffix('')}/), not the file {output}")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a folder")
    pairs: list[tuple[Path, Path]] = []
    for src in sources:
        if src.is_dir():
            files = scan_folder(src, output.resolve())
            if not files:
                log.warning("%s: no video files found", src)
            pairs += [(f, output / f.relative_to(src).with_suffix(".mp4")) for f in files]
        else:
            pairs.append((src, output / (src.stem + ".mp4")))
    if not pairs:
        raise InputError(f"no video files found in {', '.join(map(str, sources))}")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        key = dst.absolute()
        if key in seen:
            raise ConfigError(
                f"{seen[key]} and {src} would both be written to {dst}; rename one or process them separately"
            )
        seen[key] = src
        if src.exists() and src.resolve() == dst.resolve():
            raise ConfigError(f"output {dst} is the input file; choose another output folder")
    return pairs


def process_many(
    inputs: str | Path | Iterable[str | Path],
    output: str | Path,
    processor_factory: ProcessorFactory,
    options: JobOptions = JobOptions(),
    *,
    workers: int = 1,
    ray_address: str | None = None,
) -> BatchResult:
    """Process files and/or folders; see :func:`plan_outputs` for where outputs go.

    Sequential (``workers=1``, no ``ray_address``): one processor, built on first need and reused
    with ``reset()`` between files; a bar per file and one overall. With ``workers > 1`` or a
    ``ray_address``: Ray (local, started on demand with ``num_cpus=workers`` and shut down after, or
    the given cluster); ``workers`` actors, each building one processor (``num_gpus=1`` each when
    the cluster has GPUs, so at most one worker per GPU), files handed out one at a time (a task per
    file); only the overall bar is shown. Outputs are the same as sequentially.

    A file that fails (unreadable, decode error, processor error) is reported by name on stderr
    and in its :class:`JobResult`; the other files still run. A processor that cannot be built
    stops the batch with that error. KeyboardInterrupt stops the batch after making the current
    output(s) playable, prints what is done, and propagates. Returns a :class:`BatchResult`
    (``.failed``, ``.exit_code``, ``.summary()``).
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers {workers} must be at least 1")
    pairs = plan_outputs(inputs, output)
    emit = emitter(options.quiet)
    check_outputs_may_be_written([dst for _, dst in pairs], options)
    with locked_outputs([dst for _, dst in pairs]):
        if workers > 1 or ray_address:
            from livediff.app.video.ray_runner import run_on_ray

            results = run_on_ray(pairs, processor_factory, options, workers, ray_address, emit)
        else:
            results = run_sequential(pairs, processor_factory, options, emit)
    emit(results.summary())
    return results


def run_sequential(pairs, factory, options: JobOptions, emit) -> BatchResult:
    from tqdm import tqdm

    holder = LazyProcessor(factory)
    results = BatchResult()
    overall = tqdm(
        total=len(pairs), desc="files", unit="file", disable=not options.progress or len(pairs) < 2, position=0,
        file=sys.stderr,
    )
    src = dst = None
    try:
        for src, dst in pairs:
            result, _ = process_file(src, dst, holder, options, nested=len(pairs) > 1, emit=emit)
            results.append(result)
            if not result.ok:
                emit(result.describe())
            overall.update(1)
    except KeyboardInterrupt as stop:
        partial = partial_path_for(dst) if dst is not None else None
        kept = f"the frames done are in {partial}; " if partial is not None and partial.is_file() else ""
        how = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
        emit(f"{how} in {src} (file {len(results) + 1} of {len(pairs)}); {kept}run again with --resume to "
             f"continue")
        raise
    finally:
        overall.close()
    return results
