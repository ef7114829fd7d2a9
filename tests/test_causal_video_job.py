"""`livediff video --mode causal-video` stopped by Ctrl-C (issue 16, app-level gaps): the frames the causal
pipeline collected but had not returned yet (the incomplete chunk) are flushed into the partial output,
so it ends where the input was stopped, as with a per-frame pipeline."""
from __future__ import annotations

import numpy as np

from livediff.app.cli import main
from media import make_clip, read_frames

SIZE = 64
#: lossless in and out (FFV1), so two runs over the same frames give the same pixels
CAUSAL = ["--mode", "causal-video", "--model", "tiny-wan-causal", "--width", str(SIZE), "--height", str(SIZE),
          "--prompt", "claymation", "--no-progress", "--chunk-frames", "1", "--codec", "ffv1", "--audio", "none"]


def test_ctrl_c_writes_the_frames_held_in_the_incomplete_chunk(tmp_path, monkeypatch, capsys):
    from livediff.app.video.reader import VideoReader
    from livediff.app.video.workarea import partial_path_for

    clip = make_clip(tmp_path / "in.mkv", n_frames=10, size=(SIZE, SIZE), audio=False, codec="ffv1")
    first7 = make_clip(tmp_path / "first7.mkv", n_frames=7, size=(SIZE, SIZE), audio=False, codec="ffv1")
    out, reference = tmp_path / "out.mkv", tmp_path / "reference.mkv"
    assert main(["video", str(first7), "-o", str(reference), *CAUSAL]) == 0  # ends the ordinary way: flushed
    read = VideoReader.frames

    def ctrl_c_after_seven(self):
        """The frame source: Ctrl-C where the 8th frame would come (chunks of 1 and 4 done, 2 held)."""
        for frame in read(self):
            if frame.index == 7:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(VideoReader, "frames", ctrl_c_after_seven)
    assert main(["video", str(clip), "-o", str(out), *CAUSAL]) == 130
    assert "finishing the 2 frame(s) the processor still holds" in capsys.readouterr().err
    partial, expected = read_frames(partial_path_for(out)), read_frames(reference)
    assert len(partial) == len(expected) == 7
    assert all(np.array_equal(a, b) for a, b in zip(partial, expected))  # every frame, in order
