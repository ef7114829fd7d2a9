"""`livediff ui` start-up: a taken port is one sentence naming --port, before any model loads."""
from __future__ import annotations

import socket

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
