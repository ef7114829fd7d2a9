"""What happened to each input file of a batch job (picklable: Ray workers return them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

JobStatus = Literal["done", "skipped", "failed"]


@dataclass
class JobResult:
    """What happened to one input file (picklable; returned from Ray workers too)."""

    input_path: Path
    output_path: Path
    status: JobStatus
    #: frames in the output file (for a failed file: in the partial output, 0 if none)
    frames: int = 0
    #: frames taken over from an earlier interrupted run
    resumed_frames: int = 0
    seconds: float = 0.0
    #: one-line reason when status is "failed" (the message names the file)
    error: str | None = None
    #: the playable partial output written for a failed file (.NAME.livediff/partial.mp4), if any
    partial: Path | None = None
    #: whether running again with resume can finish it (not for a damaged input)
    resumable: bool = True
    #: (x, y, w, h) of the input the output shows when the model's aspect made the job crop
    region: tuple[int, int, int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def describe(self) -> str:
        if self.status == "failed":
            extra = ""
            if self.partial:
                extra = f"; the {self.frames} frames done are in {self.partial}"
                extra += "; run again with --resume to finish" if self.resumable else "; resuming cannot help"
            error = self.error or ""
            named = error if error.startswith(str(self.input_path)) else f"{self.input_path}: {error}"
            return f"FAILED {named}{extra}"
        if self.status == "skipped":
            return f"skipped {self.input_path} (output {self.output_path} already finished)"
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.resumed_frames} resumed" if self.resumed_frames else ""
        return (
            f"done {self.input_path} -> {self.output_path} "
            f"({self.frames} frames{resumed}, {self.seconds:.1f} s, {fps:.1f} fps)"
        )


class BatchResult(list):
    """``list[JobResult]`` in input order, plus the overall status."""

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0 when every file succeeded (or was skipped), 1 otherwise — for the CLI."""
        return 0 if self.ok else 1

    def summary(self) -> str:
        done = sum(r.status == "done" for r in self)
        skipped = sum(r.status == "skipped" for r in self)
        text = f"{done} of {len(self)} files done"
        if skipped:
            text += f", {skipped} skipped"
        if self.failed:
            text += f", {len(self.failed)} failed: " + ", ".join(str(r.input_path) for r in self.failed)
        return text
