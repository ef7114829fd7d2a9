"""ICE servers (STUN/TURN) of the Webcam tab's WebRTC transport, for both ends of every connection.

Without them each peer offers only its own addresses: enough when the browser reaches the server's
addresses directly (one machine, one LAN, a container on the host's network), not for a GPU box
behind NAT or in a container whose UDP ports are not published. A STUN server lets each peer learn
its public address; a TURN server relays the media, so the GPU box needs no inbound UDP port at all.

`livediff ui --ice-server URL` (repeatable) names them; TURN credentials come from the environment
(`LIVEDIFF_TURN_USERNAME`, `LIVEDIFF_TURN_CREDENTIAL`), not the command line, which other users of
the machine can read. The same list goes to the server's peer connections (aiortc uses the first
STUN and the first TURN server of it) and to the page's `RTCPeerConnection`, which therefore carries
the TURN credentials: give livediff a TURN user of its own.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from livediff.errors import ConfigError

SCHEMES = ("stun", "turn", "turns")
TURN_USERNAME_ENV, TURN_CREDENTIAL_ENV = "LIVEDIFF_TURN_USERNAME", "LIVEDIFF_TURN_CREDENTIAL"
EXAMPLES = "e.g. stun:stun.example.org:3478, turn:turn.example.org:3478?transport=udp or turns:turn.example.org:5349"


@dataclass(frozen=True)
class IceServer:
    url: str
    username: str | None = None
    credential: str | None = None

    def browser_config(self) -> dict[str, str]:
        """The entry of the page's `RTCPeerConnection({iceServers: [...]})`."""
        config = {"urls": self.url}
        if self.username is not None and self.credential is not None:
            config.update(username=self.username, credential=self.credential)
        return config


def parse_ice_servers(urls: Sequence[str], environ: Mapping[str, str] = os.environ) -> tuple[IceServer, ...]:
    """The ICE servers `urls` name (stun:, turn: or turns:), TURN ones with the environment's credentials;
    a malformed URL or a TURN URL without both credentials is a `ConfigError` of one sentence."""
    from aiortc.rtcicetransport import parse_stun_turn_uri

    servers = []
    for url in urls:
        scheme = url.split(":", 1)[0]
        if scheme not in SCHEMES:
            raise ConfigError(f"--ice-server {url!r}: an ICE server URL starts with stun:, turn: or turns: ({EXAMPLES})")
        try:
            parse_stun_turn_uri(url)
        except ValueError:
            raise ConfigError(f"--ice-server {url!r} is not a {scheme}: URL of a host and an optional port "
                              f"({EXAMPLES})") from None
        if scheme == "stun":
            servers.append(IceServer(url))
            continue
        username, credential = environ.get(TURN_USERNAME_ENV), environ.get(TURN_CREDENTIAL_ENV)
        if not username or not credential:
            raise ConfigError(f"--ice-server {url!r} is a TURN server: set its user name and password in the "
                              f"environment variables {TURN_USERNAME_ENV} and {TURN_CREDENTIAL_ENV}")
        servers.append(IceServer(url, username, credential))
    return tuple(servers)


def rtc_configuration(servers: Sequence[IceServer]) -> Any:
    """aiortc's configuration for the server's peer connections: exactly these servers (none: host
    addresses only, as the page; aiortc would otherwise ask a public STUN server of its choosing)."""
    from aiortc import RTCConfiguration, RTCIceServer

    return RTCConfiguration(iceServers=[RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
                                        for s in servers])


#: every interface: the addresses aioice itself offers (all but loopback)
EVERY_INTERFACE = ("0.0.0.0", "::", "")


def ice_addresses(host: str) -> tuple[str, ...] | None:
    """The local addresses the server's peer connections offer and bind UDP on when it serves `host`:
    that host's own addresses (127.0.0.1 stays on this machine), or None for every interface."""
    if host in EVERY_INTERFACE:
        return None
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    return tuple(sorted({str(info[4][0]) for info in infos}))


def bind_ice_to(host: str) -> None:
    """Make the server's WebRTC gather host candidates, and open UDP sockets, only on `host`'s addresses.

    aioice (under aiortc) offers every interface but loopback, whatever address the HTTP server
    listens on, so a server on 127.0.0.1 opened UDP ports on the machine's network addresses. aioice
    has no setting for it: its address lookup (`aioice.ice.get_host_addresses`) is replaced for the
    process, which serves one UI (`launch`); 0.0.0.0 restores aioice's own."""
    import aioice.ice

    original = getattr(aioice.ice, "_livediff_original", aioice.ice.get_host_addresses)
    setattr(aioice.ice, "_livediff_original", original)
    allowed = ice_addresses(host)
    if allowed is None:
        aioice.ice.get_host_addresses = original
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in allowed if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses
