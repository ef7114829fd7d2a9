"""What an opened-and-closed UI session leaves behind: the server's RSS and Gradio's per-session state.

Each simulated tab is a `gradio_client.Client` that runs one txt2img request on the real UI server
(its session gets a pipeline) and disconnects; Gradio's unload closes it. The server runs in this
process, the clients in a child process, so the RSS measured is the server's alone. After a warm-up (first
calls build and allocate), `--sessions` more tabs open and close; reported: the server's RSS growth
per session, and how many sessions' state Gradio's state holder still keeps.

    python benchmarks/session_memory.py --sessions 100
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchmarks.common import markdown_table, publish  # noqa: E402


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4


def open_and_close(url: str, count: int) -> None:
    """`count` tabs, one after another, from a child process."""
    import subprocess

    tabs = ("from gradio_client import Client\n"
            f"for _ in range({count}):\n"
            f"    client = Client({url!r}, verbose=False)\n"
            "    client.predict('txt2img', None, prompt='a', api_name='/image')\n"
            "    client.close()\n")
    subprocess.run([sys.executable, "-c", tabs], check=True)


def settle(server, timeout_s: float = 120.0) -> None:
    """Wait until Gradio's unload has closed every session, then collect."""
    deadline = time.monotonic() + timeout_s
    while len(server.registry) and time.monotonic() < deadline:
        time.sleep(0.2)
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description="RSS and Gradio state left by opened-and-closed UI sessions")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from ui_helpers import running_server, tiny_engine

    with running_server(tiny_engine()) as server:
        open_and_close(server.url, args.warmup)
        settle(server)
        before = rss_kib()
        open_and_close(server.url, args.sessions)
        settle(server)
        grown = rss_kib() - before
        kept = len(server.demo.state_holder.session_data)
        still_open = len(server.registry)
    publish(f"tiny model 128², {args.warmup} warm-up sessions, then {args.sessions} sessions opened (one txt2img "
            f"request each) and closed through gradio_client, server in its own process",
            markdown_table(["sessions", "RSS growth KiB", "KiB per session", "Gradio session states kept",
                            "livediff sessions open"],
                           [[str(args.sessions), str(grown), f"{grown / args.sessions:.0f}", str(kept),
                             str(still_open)]]), args.out)


if __name__ == "__main__":
    main()
