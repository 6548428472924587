"""The Exim feed: Exim has no milter client, so its data ACL tells us instead.

The kit's ``acl_smtp_data`` and ``acl_not_smtp`` ACLs send one line per
accepted message with ``${readsocket{inet:127.0.0.1:PORT}...}`` (a ``warn``
verb with a 1 s timeout and an empty failure string: a bridge that is away
costs Exim nothing but that second at most, and never refuses mail)::

    QUEUED <message_exim_id> <message_size> <recipients, comma-space separated>\\n

and get ``OK\\n`` (recorded or not ours), or ``ERR <reason>\\n`` for a line that
is not understood. Every byte is hostile: the id and size must have their
shapes, the line its length, and the server answers each connection in its own
thread with a read timeout, so a stuck client cannot hold others up. Exim holds
mail itself (``hold_domains``), so nothing recorded here is marked held.

Loopback TCP, not a unix socket: Exim 4.96's readsocket keeps the descriptor
number of a failed unix-socket connect in its lookup cache and reuses it for
the next message of the same process, by then another open file (measured:
the main log, then a 421 "Unexpected failure"). Any local user can send lines
here: the worst a forged line does is add a row that the next reconciliation
removes (flushes run by id and skip ids that are not queued), or count towards
a held domain's quota until then.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import socketserver
import threading

from etrn_bridge.feeds.recorder import QueueRecorder

log = logging.getLogger("etrn_bridge.exim_feed")

VERB = "QUEUED"
# Exim 4.96 ids are 6-6-2 base-62 characters, 4.97+ 6-11-4: accept that alphabet, bounded.
_MESSAGE_ID = re.compile(r"[0-9A-Za-z]{1,16}(?:-[0-9A-Za-z]{1,16}){1,3}\Z")
_SIZE = re.compile(r"[0-9]{1,15}\Z")
RECIPIENT_SEPARATOR = ", "  # how Exim expands $recipients
# A message may have thousands of recipients; more than this is not a line Exim sent us.
MAX_LINE = 1 << 20
READ_TIMEOUT = 5.0
# The rest of a refused over-long request is read and dropped (up to this much,
# until the sender's EOF) before the answer: a socket closed with unread input
# sends a TCP reset, which can destroy the answer before the sender reads it.
MAX_DISCARD = 4 * MAX_LINE
REPLY_OK = b"OK\n"


class EximFeedError(ValueError):
    """A request line the feed does not accept; ``reason`` goes back to the sender."""


def parse_line(line: bytes) -> tuple[str, int, list[str]]:
    """``QUEUED id size recipients`` -> (id, size, recipients); raises EximFeedError."""
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise EximFeedError("not UTF-8") from None
    parts = text.split(" ", 3)
    if len(parts) != 4 or parts[0] != VERB:
        raise EximFeedError(f"expected '{VERB} <id> <size> <recipients>'")
    _, message_id, size, recipients = parts
    if not _MESSAGE_ID.match(message_id):
        raise EximFeedError("bad message id")
    if not _SIZE.match(size):
        raise EximFeedError("bad size")
    addresses = [a.strip() for a in recipients.split(RECIPIENT_SEPARATOR) if a.strip()]
    if not addresses:
        raise EximFeedError("no recipients")
    return message_id, int(size), addresses


class _Handler(socketserver.StreamRequestHandler):
    timeout = READ_TIMEOUT
    server: EximFeedServer

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self._discard_rest()
                raise EximFeedError("line too long")
            message_id, size, recipients = parse_line(line)
            self.server.recorder.message_queued(message_id, recipients, size, can_hold=False)
            reply = REPLY_OK
        except EximFeedError as exc:
            log.warning("exim feed: refused a line: %s", exc)
            reply = f"ERR {exc}\n".encode()
        except (OSError, TimeoutError) as exc:
            log.warning("exim feed: connection failed: %s", exc)
            return
        except Exception:  # a bug costs this line, never the feed
            log.exception("exim feed: internal error")
            reply = b"ERR internal error\n"
        with contextlib.suppress(OSError):
            self.wfile.write(reply)

    def _discard_rest(self) -> None:
        left = MAX_DISCARD
        while left > 0 and (chunk := self.rfile.read1(min(left, 1 << 16))):
            left -= len(chunk)


class EximFeedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], recorder: QueueRecorder) -> None:
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise OSError(f"the Exim feed listens on loopback only, not {address[0]}")
        self.recorder = recorder
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


def start_exim_feed(address: tuple[str, int], recorder: QueueRecorder) -> EximFeedServer:
    """Bind the feed's loopback port and serve it from a daemon thread."""
    server = EximFeedServer(address, recorder)
    thread = threading.Thread(target=server.serve_forever, name="exim-feed", daemon=True)
    thread.start()
    log.info("exim feed listening on %s:%d", *address)
    return server
