"""fowld with TCP_NODELAY on every TCP socket Twisted makes (the study's fix for
Nagle + delayed ACK on the dilation connection). Run with the venv's python."""
import socket
import sys

from twisted.internet import tcp

_orig_init = tcp.Connection.__init__


def _init(self, skt, protocol, reactor=None):
    _orig_init(self, skt, protocol, reactor)
    try:
        skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


tcp.Connection.__init__ = _init

from fowl.cli import fowld  # noqa: E402

sys.exit(fowld())
