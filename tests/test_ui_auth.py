"""`livediff ui --auth-file`: a shared network's server asks who you are; without it, it says it is open."""
from __future__ import annotations

import pytest

from livediff.app.ui.auth import read_auth_file
from livediff.errors import ConfigError
from ui_helpers import running_server


def test_an_auth_file_is_read_and_a_bad_one_is_one_sentence(tmp_path):
    good = tmp_path / "users"
    good.write_text("# who may use the GPU\nana:correct horse\n\nbo:b:c\n")
    assert read_auth_file(str(good)) == [("ana", "correct horse"), ("bo", "b:c")]
    (tmp_path / "bad").write_text("ana\n")
    with pytest.raises(ConfigError, match="line 1: write one user:password per line"):
        read_auth_file(str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match="cannot be read"):
        read_auth_file(str(tmp_path / "missing"))


def test_a_server_with_an_auth_file_answers_only_signed_in_clients():
    from gradio_client import Client

    with running_server(auth=[("ana", "correct horse")]) as server:
        with pytest.raises(Exception):
            Client(server.url, verbose=False)
        with pytest.raises(Exception):
            Client(server.url, auth=("ana", "wrong"), verbose=False)
        assert Client(server.url, auth=("ana", "correct horse"), verbose=False).view_api(return_format="dict")


def test_the_help_says_the_server_is_open_without_an_auth_file(capsys, monkeypatch):
    from livediff.app import cli

    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside option names

    with pytest.raises(SystemExit):
        cli.main(["ui", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "no authentication unless --auth-file is given" in text
