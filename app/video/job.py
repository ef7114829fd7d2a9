"""One input file → one output file: decode, process, encode in segments, join.

Entry point :func:`process_video`; the segment/resume rules are in :mod:`segments`, the frame
geometry in :mod:`geometry`.
"""
from __future__ import annotations

import errno
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from livediff.app.video.codecs import encoder_settings, resolve_codec
from livediff.app.video.geometry import plan_geometry, working_size
from livediff.app.video.options import JobOptions
from livediff.app.video.output_checks import check_output_file, check_outputs_may_be_written
from livediff.app.video.processor import LazyProcessor, ProcessorFactory, check_output_frame
from livediff.app.video.reader import VideoReader, count_video_packets
from livediff.app.video.results import JobResult
from livediff.app.video.segments import (Segment, SegmentWriter, assemble, input_identity, load_resumable,
                                         save_manifest, save_state)
from livediff.app.video.workarea import MANIFEST_NAME, OutputLock, clear_work, partial_path_for, work_dir_for
from livediff.errors import InputError, LivediffError

log = logging.getLogger(__name__)


class StopRequested(KeyboardInterrupt):
    """Raised inside a file run when its ``should_stop`` says so (Ray workers, on the driver's
    Ctrl-C): handled exactly like a KeyboardInterrupt, i.e. the partial output is made playable."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, ``timeout``, job schedulers) during a run: handled exactly like
    Ctrl-C (the partial output is made playable); the CLI exits with 143."""


class DiskFullError(LivediffError):
    """The disk holding the output is full, or the process's file-size limit is reached."""


#: errno values meaning "no more room for this file"
NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


@contextmanager
def stop_signals() -> Iterator[None]:
    """For the length of a run (main thread only: Python sets handlers nowhere else): SIGTERM
    raises :class:`Terminated`, and SIGXFSZ is ignored, so that writing past a file-size limit
    (``ulimit -f``) fails with EFBIG, which is reported, instead of killing the process (Python
    ignores it at start-up; a program embedding livediff may not)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame) -> None:
        raise Terminated("SIGTERM")

    previous = {sig: signal.signal(sig, handler)
                for sig, handler in ((signal.SIGTERM, terminate), (signal.SIGXFSZ, signal.SIG_IGN))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def locked_outputs(outputs: list[Path]) -> Iterator[None]:
    """Hold the lock of every output (see :mod:`workarea`) and handle stop signals; refuses in one
    sentence, before any model loads, when another run is writing one of them."""
    with stop_signals(), ExitStack() as locks:
        for output in outputs:
            locks.enter_context(OutputLock(output))
        yield


class FileState:
    """What a file run has achieved so far, for the failure report."""

    def __init__(self) -> None:
        self.frames = 0
        self.resumed = 0
        self.partial: Path | None = None
        self.resumable = True


def progress_bar(enabled: bool, total: int | None, initial: int, desc: str, nested: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="frame",
        disable=not enabled,
        leave=not nested,
        position=1 if nested else None,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def run_file(
    input_path: Path,
    output_path: Path,
    holder: LazyProcessor,
    options: JobOptions,
    state: FileState,
    *,
    nested: bool,
    on_frame: Callable[[int, int | None], None] | None,
    emit: Callable[[str], None],
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    t0 = time.perf_counter()
    parts = work_dir_for(output_path)
    if options.resume and output_path.exists() and not (parts / MANIFEST_NAME).exists():
        try:  # finished earlier (an interrupted run always keeps its manifest)
            return JobResult(input_path, output_path, "skipped", frames=count_video_packets(output_path))
        except InputError:
            pass  # unreadable: make it again
    with VideoReader(input_path) as reader:
        processor = holder.get()
        geom = plan_geometry(reader.size, working_size(processor), options.resize)
        cropped = geom.output_size != (reader.width - reader.width % 2, reader.height - reader.height % 2)
        if cropped:
            x, y, w, h = geom.region
            emit(f"{input_path.name}: {reader.width}x{reader.height} does not have the model's aspect "
                 f"({geom.work_size[0]}x{geom.work_size[1]}): restyling the centred {w}x{h} region at ({x}, {y}); "
                 f"the output is {geom.output_size[0]}x{geom.output_size[1]} (--resize stretch keeps the whole "
                 f"picture, distorted)")
        codec = resolve_codec(options.codec)
        encoder_settings(codec, options.quality, *geom.output_size, reader.fps)  # fail before any work
        describe = getattr(processor, "identity", None)
        identity = json.loads(json.dumps({  # as the manifest will read back (tuples become lists)
            "input": input_identity(input_path),
            "encode": {
                "codec": codec,
                "quality": options.quality,
                "size": list(geom.output_size),
                "work": list(geom.work_size) if geom.work_size else None,
                "region": list(geom.region),
                "time_base": str(reader.time_base),
            },
            "processor": describe() if callable(describe) else None,
        }, default=str))
        flush = getattr(processor, "flush", None)
        delayed = callable(flush)
        save_processor_state = getattr(processor, "save_state", None)
        load_processor_state = getattr(processor, "load_state", None)
        stateful = callable(save_processor_state) and callable(load_processor_state)
        segments = load_resumable(parts, identity, options.resume, emit, stateful)
        done = segments[-1].first + segments[-1].frames if segments else 0
        state.resumed = state.frames = done
        parts.mkdir(parents=True, exist_ok=True)
        save_manifest(parts, identity, segments)
        processor.reset()
        if done and stateful and callable(load_processor_state):
            load_processor_state(parts / str(segments[-1].state))
        warm: deque[np.ndarray] | None = (deque(maxlen=options.resume_warmup)
                                          if done and options.resume_warmup and not stateful else None)
        writer: SegmentWriter | None = None
        total = reader.estimated_frames
        bar = progress_bar(options.progress, total, min(done, total or done), input_path.name, nested)
        decoded = 0
        # A processor with flush() returns frames late (see `FrameProcessor`): the frames fed and not yet
        # answered wait here, as (index, pts), or None for a resume warm-up frame whose output is dropped.
        waiting: deque[tuple[int, int] | None] = deque()
        # a flushed processor has ended its stream: its state no longer continues the file
        flushed = False

        def deliver(outputs) -> None:
            nonlocal writer
            outputs = list(outputs) if delayed else [outputs]
            if len(outputs) > len(waiting):
                raise TypeError(f"processor {type(processor).__name__} returned more frames than it was given")
            # every slot is claimed before any frame is written: when Ctrl-C stops the writing, the slots
            # still waiting are exactly the frames the processor holds (`flush_held`)
            slots = [waiting.popleft() for _ in outputs]
            for out, slot in zip(outputs, slots):
                out = check_output_frame(out, processor)
                if slot is None:
                    continue
                index, pts = slot
                if writer is None:
                    writer = SegmentWriter(parts, len(segments), index, pts, reader, geom, options)
                writer.write(geom.to_output(out), pts)
                state.frames += 1
                bar.update(1)
                if on_frame is not None:
                    on_frame(state.frames, total)
            # closed only after every output of the call is written: the processor's state then holds
            # exactly the frames still waiting (see `segments`)
            if writer is not None and writer.frames >= options.segment_frames:
                segment, writer = writer.commit(), None
                listed(segment, with_state=True)

        def listed(segment: Segment | None, with_state: bool) -> None:
            """List a closed segment; with its processor state when the processor stands after its last
            frame (not after an interruption, which may have stopped it inside a frame)."""
            if segment is None:
                return
            segments.append(segment)
            save_manifest(parts, identity, segments)
            # a state holding frames no segment has yet, or of a stream flush() ended, would not continue the file
            if with_state and callable(save_processor_state) and not flushed and not waiting:
                save_state(parts, segments, save_processor_state, identity)

        try:
            for frame in reader.frames():
                decoded = frame.index + 1
                if should_stop is not None and should_stop():
                    raise StopRequested(f"{input_path}: stopped")
                if frame.index < done:
                    if warm is not None and frame.index >= done - options.resume_warmup:
                        warm.append(frame.rgb)
                    continue
                if warm:
                    for rgb in warm:
                        waiting.append(None)
                        deliver(processor(geom.to_processor(rgb)))
                    warm = None
                waiting.append((frame.index, frame.pts))
                deliver(processor(geom.to_processor(frame.rgb)))
            if delayed:
                flushed = True
                deliver(flush())
                if waiting:
                    raise TypeError(f"processor {type(processor).__name__} returned {len(waiting)} frame(s) fewer "
                                    f"than it was given, flush() included")
            if reader.frame_count and decoded < reader.frame_count:
                raise InputError(f"{input_path}: only {decoded} of its {reader.frame_count} frames could be decoded "
                                 f"(the file is truncated or damaged)")
            if writer is not None:
                segment, writer = writer.commit(), None
                listed(segment, with_state=True)
        except BaseException as stopped:
            if delayed and isinstance(stopped, KeyboardInterrupt) and any(waiting):
                flushed = True
                flush_held(flush, deliver, sum(slot is not None for slot in waiting), emit)
            # Make what is done playable: close the open segment, join everything into the partial output.
            state.resumable = not isinstance(stopped, InputError)
            if writer is not None:
                try:
                    listed(writer.commit(), with_state=False)
                except BaseException:
                    writer.discard()
                    state.frames = sum(seg.frames for seg in segments)
            if segments:
                partial = partial_path_for(output_path)
                try:
                    state.frames = assemble(parts, segments, partial, input_path, options.audio, partial=True)
                    state.partial = partial
                except BaseException as exc:  # keep the original error; parts stay for resume
                    log.warning("%s: partial output not written (%s)", partial, exc)
            if not state.resumable:  # a damaged input stays damaged: its parts are no use
                clear_work(parts)
            raise
        finally:
            bar.close()
        if not segments:
            raise InputError(f"{input_path}: no video frames decoded")
        frames = assemble(parts, segments, output_path, input_path, options.audio, partial=False)
        clear_work(parts)
    return JobResult(input_path, output_path, "done", frames=frames, resumed_frames=done,
                     seconds=time.perf_counter() - t0, region=geom.region if cropped else None)


def flush_held(flush: Callable[[], list], deliver: Callable[[list], None], held: int,
               emit: Callable[[str], None]) -> None:
    """On Ctrl-C (or a Ray stop), write the frames a chunked processor was fed but has not returned yet.

    They were read and only the chunking held them back, so the partial output ends where the input
    was stopped, as with a per-frame processor. The flushed frames are what the file's end would
    give, not what the stream gives later, and flushing ends the stream: the segment they close has
    no saved state, so a resume makes them again from the last saved state. A chunk being computed when
    Ctrl-C landed is still held (the causal pipeline computes a chunk all or nothing) and is flushed
    with the rest; a Ctrl-C that landed before the processor took the newest frame leaves the
    earlier ones, which `deliver` gives the oldest waiting slots, theirs. A second Ctrl-C, or a
    processor left unusable by the interruption, drops the held frames and keeps the rest.
    """
    emit(f"stopped: finishing the {held} frame(s) the processor still holds (Ctrl-C again to drop them)")
    try:
        deliver(flush())
    except BaseException as exc:
        log.warning("the %d held frame(s) were not written (%s)", held, type(exc).__name__)


def process_file(
    input_path: Path,
    output_path: Path,
    holder: LazyProcessor,
    options: JobOptions,
    *,
    nested: bool = False,
    on_frame: Callable[[int, int | None], None] | None = None,
    emit: Callable[[str], None],
    should_stop: Callable[[], bool] | None = None,
) -> tuple[JobResult, Exception | None]:
    """Run one file; an ordinary error becomes a failed result (returned with the exception).

    KeyboardInterrupt/SystemExit and a processor that cannot be built propagate: the first stop
    the run, the second would fail every file the same way.
    """
    state = FileState()
    t0 = time.perf_counter()

    def failed(error: str) -> JobResult:
        return JobResult(input_path, output_path, "failed", frames=state.frames if state.partial else 0,
                         resumed_frames=state.resumed, seconds=time.perf_counter() - t0, error=error,
                         partial=state.partial, resumable=state.resumable)

    try:
        result = run_file(input_path, output_path, holder, options, state, nested=nested, on_frame=on_frame,
                          emit=emit, should_stop=should_stop)
        return result, None
    except StopRequested:
        return failed(f"{input_path}: interrupted"), None
    except Exception as exc:
        if holder.build_error is not None:
            raise
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            full = DiskFullError(f"{input_path}: the disk is full or the file-size limit is reached ({exc.strerror}) "
                                 f"while writing {output_path}; free space (or raise the limit) and run again with "
                                 f"--resume")
            full.__cause__ = exc
            exc = full
        message = str(exc) if isinstance(exc, LivediffError) else f"{input_path}: {type(exc).__name__}: {exc}"
        if str(input_path) not in message:
            message = f"{input_path}: {message}"
        return failed(message), exc


def emitter(quiet: bool) -> Callable[[str], None]:
    def emit(message: str) -> None:
        if not quiet:
            from tqdm import tqdm

            tqdm.write(f"livediff: {message}", file=sys.stderr)

    return emit


def process_video(
    input_path: str | Path,
    output_path: str | Path,
    processor_factory: ProcessorFactory,
    options: JobOptions = JobOptions(),
    *,
    on_frame: Callable[[int, int | None], None] | None = None,
) -> JobResult:
    """Process one video file into ``output_path`` (a file; its suffix picks the container).

    ``on_frame(done, total_or_None)`` is called after each output frame (for a UI progress bar).

    Returns a :class:`JobResult` with status "done" or "skipped" (resume, output already
    finished). Errors are raised: :class:`InputError` for an unreadable input (naming it),
    :class:`ConfigError` for bad settings, or whatever the processor raised — in every case, and on
    KeyboardInterrupt, after writing a playable partial output when frames were produced.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    check_output_file(input_path, output_path)
    check_outputs_may_be_written([output_path], options)
    with locked_outputs([output_path]):
        result, exc = process_file(input_path, output_path, LazyProcessor(processor_factory), options,
                                   on_frame=on_frame, emit=emitter(options.quiet))
    if exc is not None:
        raise exc
    return result
