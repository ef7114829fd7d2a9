"""The Video tab: a whole uploaded file through the batch video job, then its temporal metrics.

The job (`app.video.job.process_video`) keeps the input's fps, timestamps, audio and size: the
session's video pipeline runs at the upload's own aspect (longest side the server's size), so
nothing is cropped and the metrics compare the whole picture with the whole picture. Its frames
go through the session's own stream pipeline, taking the engine lock once per *frame*, so live
webcam tabs keep getting frames while a file is being processed. Settings are read when the job
starts; changing a control during the job affects the next job, so one output never mixes styles.

On a causal-video server the session's video pipeline is a causal one: the job drives it exactly as
`livediff video --mode causal-video` does (`processor.pipeline_processor`: frames come back a chunk
at a time and the file's end flushes the last one), so the progress moves a chunk at a time.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from livediff.app.ui.sessions import SessionRegistry
from livediff.app.ui.settings import LiveSettings
from livediff.app.video.geometry import size_multiple, suggest_working_size
from livediff.app.video.job import process_video
from livediff.app.video.options import JobOptions
from livediff.app.video.processor import pipeline_processor
from livediff.app.video.reader import VideoReader
from livediff.errors import ConfigError, InputError, LivediffError
from livediff.app.eval.metrics import TemporalMetrics, evaluate_videos

CLI_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")

ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class VideoResult:
    output: Path
    metrics_json: Path
    metrics: TemporalMetrics
    frames: int
    seconds: float

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        return f"{self.frames} frames in {self.seconds:.1f} s ({fps:.2f} fps)"


def in_page_words(message: str, source: Path, output: Path) -> str:
    """The batch job's sentence as the page says it: the server's file paths become "the uploaded video" and
    "the restyled video", and advice naming command-line flags (a clause with `--flag`), which a page
    user cannot pass, is dropped."""
    for path, words in ((output, "the restyled video"), (source, "the uploaded video"),
                        (output.parent, "the server's work folder")):
        message = message.replace(str(path), words)
    clauses = [clause for clause in message.split("; ") if not CLI_FLAG.search(clause)]
    return "; ".join(clauses) if clauses else message


def restyle_video(registry: SessionRegistry, session_id: str, source: str | Path | None, settings: LiveSettings,
                  on_progress: ProgressFn | None = None) -> VideoResult:
    if not source:
        raise InputError("upload a video first")
    source = Path(source)
    session = registry.get(session_id)
    engine = registry.engine
    with VideoReader(source) as reader:  # an unreadable upload is named before any model work
        size = suggest_working_size(reader.width, reader.height, longest=max(engine.width, engine.height),
                                    multiple=size_multiple(engine.stream_mode))
    with engine.lock:
        pipe, refused = session.pipeline("video", settings, size)
    if refused:
        raise ConfigError(refused)
    output = session.new_run_dir() / f"{source.stem}-livediff.mp4"
    processor = pipeline_processor(pipe, {"prompt": settings.prompt}, lock=engine.lock)

    def on_frame(done: int, total: int | None) -> None:
        registry.touch(session_id)
        if on_progress is not None:
            on_progress(done, total)

    try:
        result = process_video(source, output, lambda: processor, JobOptions(progress=False, quiet=True),
                               on_frame=on_frame)
    except LivediffError as exc:
        raise type(exc)(in_page_words(str(exc), source, output)) from exc
    metrics = evaluate_videos(source, output, elapsed_seconds=result.seconds)
    metrics_json = output.with_suffix(".metrics.json")
    metrics_json.write_text(json.dumps(metrics.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return VideoResult(output, metrics_json, metrics, result.frames, result.seconds)
