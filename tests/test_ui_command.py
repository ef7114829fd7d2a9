"""`livediff ui` start-up: a taken port is one sentence naming --port, before any model loads."""
from __future__ import annotations

import socket

import pytest

from livediff.app.cli import main


def test_a_port_in_use_is_reported_before_loading_and_names_the_option(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["ui", "--model", "tiny", "--device", "cpu", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert "loading" not in err and "open http" not in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--idle-timeout", "nan"], "--idle-timeout nan must be a positive, finite number of seconds"),
    (["--idle-timeout", "inf"], "--idle-timeout inf must be a positive, finite number of seconds"),
    (["--host", "999.1.1.1"], "--host '999.1.1.1' is neither an IP address nor a name this machine resolves ("),
    (["--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine ("),  # TEST-NET-1: never local
])
def test_a_bad_host_or_idle_timeout_is_one_sentence_before_loading(capsys, args, message):
    code = main(["ui", "--model", "tiny", "--device", "cpu", "--port", "7861", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "already in use" not in err
    assert "loading" not in err and "Traceback" not in err


def test_sigterm_stops_the_server_and_removes_its_session_folder(tmp_path):
    """`kill` (and `docker stop`) send SIGTERM: the temporary session folder must not be left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    server = subprocess.Popen([sys.executable, "-m", "livediff.app", "--model", "tiny", "--device", "cpu",
                               "--port", str(port), "--width", "64", "--height", "64"],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = server.stderr.readline()
            lines.append(line)
            if "open http" in line or not line:
                break
        assert "open http" in lines[-1], lines
        assert any(p.name.startswith("livediff-ui-") for p in tmp_path.iterdir())
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        server.kill()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("livediff-ui-")]
    assert server.returncode == 128 + signal.SIGTERM and not leftovers, (server.returncode, leftovers)


def test_batch_options_out_of_range_are_one_sentence_before_loading(capsys):
    for option, value, message in (("--batch-wait-ms", "5000", "--batch-wait-ms 5000.0 is outside 0..1000"),
                                   ("--max-batch", "0", "--max-batch 0 is outside 1..64")):
        code = main(["ui", "--model", "tiny", "--device", "cpu", option, value])
        err = capsys.readouterr().err
        assert code == 2 and message in err
        assert "loading" not in err and "Traceback" not in err


def test_bad_ice_servers_are_one_sentence_before_loading(capsys, monkeypatch):
    monkeypatch.delenv("LIVEDIFF_TURN_USERNAME", raising=False)
    monkeypatch.delenv("LIVEDIFF_TURN_CREDENTIAL", raising=False)
    for url, message in (("http://stun.example.org", "'http://stun.example.org': an ICE server URL starts with "
                                                     "stun:, turn: or turns:"),
                         ("stun:", "'stun:' is not a stun: URL of a host and an optional port"),
                         ("turn:turn.example.org:3478", "is a TURN server: set its user name and password in the "
                                                         "environment variables LIVEDIFF_TURN_USERNAME and "
                                                         "LIVEDIFF_TURN_CREDENTIAL")):
        code = main(["ui", "--model", "tiny", "--device", "cpu", "--ice-server", "stun:stun.example.org:3478",
                     "--ice-server", url])
        err = capsys.readouterr().err
        assert code == 2 and message in err
        assert "loading" not in err and "Traceback" not in err
