"""Messages that point the right way: the thing the user typed, in their own words (CLI or Python)."""
from __future__ import annotations

import pytest

from livediff.app import cli
from livediff.errors import ModelNotAvailableError
from livediff.pipelines.models import load_models, load_tiny_vae


def test_an_offline_model_tells_python_and_cli_users_what_to_write_without_a_chained_traceback(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as caught:
        load_models("someone/missing-model", device="cpu", dtype="float32")
    message = str(caught.value)
    assert "use --model tiny (model='tiny' in Python)" in message
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_an_offline_vae_suggests_a_vae_not_a_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as caught:
        load_tiny_vae("nope/vae")
    assert str(caught.value).startswith("Tiny VAE 'nope/vae'") and "--vae tiny-taesd" in str(caught.value)
    assert "--model" not in str(caught.value)


def test_a_model_path_that_does_not_exist_is_called_so():
    with pytest.raises(ModelNotAvailableError, match="Model path './no/such/folder' does not exist"):
        load_models("./no/such/folder", device="cpu", dtype="float32")


def test_eval_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    assert cli.main(["eval", str(tmp_path / "clips"), str(tmp_path / "out.mp4")]) == 2
    assert f"{tmp_path / 'clips'} is a folder; eval compares two video files" in capsys.readouterr().err


def test_loading_prints_no_third_party_noise_a_user_cannot_act_on(monkeypatch, caplog):
    """huggingface_hub's deprecation of an argument diffusers passes, and diffusers' warning about an
    empty float32 module list of the tiny Wan VAE."""
    import warnings

    import torch

    from livediff.pipelines.causal.presets import build_tiny_wan_vae

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as seen:
        with pytest.raises(ModelNotAvailableError):
            load_models("someone/missing-model", device="cpu", dtype="float32")
        build_tiny_wan_vae(dtype=torch.float16)
    assert not [str(w.message) for w in seen if "local_dir_use_symlinks" in str(w.message)]
    assert "should be kept in float32" not in caplog.text


def test_x265_encodes_without_its_info_lines(tmp_path):
    """x265 logs on the process's stderr from C, so only a child process can see it."""
    import subprocess
    import sys

    code = """
import sys
from fractions import Fraction
import av, numpy as np
from livediff.app.video.codecs import encoder_settings
options, _ = encoder_settings("libx265", None, 64, 48, Fraction(15))
out = av.open(sys.argv[1], "w")
stream = out.add_stream("libx265", rate=15)
stream.width, stream.height, stream.pix_fmt, stream.options = 64, 48, "yuv420p", options
for _ in range(3):
    for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
        out.mux(packet)
for packet in stream.encode(None):
    out.mux(packet)
out.close()
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.mp4")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == ""


def test_webcam_without_a_display_says_so_before_importing_the_model_code(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom livediff.app import cli\nrc = cli.main(['webcam', '--model', 'tiny'])\n"
            "print(rc, sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.split("\n")[0] == "2 []", done.stdout + done.stderr
    assert "cannot open a window: there is no display" in done.stderr


def test_a_folder_input_with_a_file_output_says_the_output_must_be_a_folder(tmp_path):
    from livediff.app.video.batch import plan_outputs
    from livediff.errors import ConfigError

    (tmp_path / "clips").mkdir()
    with pytest.raises(ConfigError, match=r"clips/ is a folder: -o must be a folder too \(e\.g\. .*single/\)"):
        plan_outputs([str(tmp_path / "clips")], str(tmp_path / "single.mp4"))
    (tmp_path / "a.mp4").write_bytes(b""), (tmp_path / "b.mp4").write_bytes(b"")
    with pytest.raises(ConfigError, match="2 inputs were given: -o must be a folder too"):
        plan_outputs([str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")], str(tmp_path / "single.mp4"))


@pytest.mark.parametrize("option,value", [("--guidance-scale", "3"), ("--delta", "0.5"), ("--cfg-type", "full"),
                                          ("--negative-prompt", "blurry")])
def test_causal_mode_refuses_guidance_options_in_the_users_words(tmp_path, capsys, option, value):
    """Before, --guidance-scale 3 was silently unused, and --negative-prompt was refused naming guidance_scale."""
    from media import make_clip

    clip = make_clip(tmp_path / "clip.mp4", n_frames=2, audio=False)
    code = cli.main(["video", str(clip), "-o", str(tmp_path / "out.mp4"), "--mode", "causal-video",
                     "--model", "tiny-wan-causal", option, value])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"livediff: error: {option} ") and "without classifier-free guidance" in err
