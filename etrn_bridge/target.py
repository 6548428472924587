"""The ETRN argument, parsed into a :class:`Target` (pure: no I/O, no policy).

RFC 1985 §5: ``ETRN [<option character>]<node name>``. ``@`` asks for the node
and its subdomains, ``#`` names a queue rather than a host. Everything here is
hostile input: anything that is not exactly a host name, an address literal or
a queue name is refused, so nothing malformed ever reaches a backend.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

import idna

# RFC 1035 §2.3.4 / RFC 5321 §4.5.3.1.2: a domain is at most 255 octets on the
# wire, i.e. 253 characters in dotted text without the trailing dot.
MAX_DOMAIN_LENGTH = 253
# RFC 1035 §2.3.4: a label is 1 to 63 octets.
MAX_LABEL_LENGTH = 63
# Exim named queues and Sendmail queue groups are short identifiers; we accept a
# conservative subset that is safe as one argv element and in a file name.
MAX_QUEUE_NAME_LENGTH = 64

# RFC 1985 §5 option characters.
OPTION_SUBTREE = "@"
OPTION_QUEUE = "#"

# RFC 952 / RFC 1123 §2.1 host name label: letters, digits, hyphen; no hyphen
# at either end. A-labels (xn--) fit this too.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# A plain ASCII host name, already valid: the common case, checked in one match
# instead of character by character and label by label (names with "xn--" go the
# long way: A-labels need the IDNA check below).
_PLAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_NAME_PATTERN = rf"(?:{_PLAIN_LABEL}\.)*{_PLAIN_LABEL}"
_PLAIN_NAME = re.compile(_PLAIN_NAME_PATTERN + r"\Z", re.ASCII)
# A targets file of plain names and "@" plain names, one per line, nothing else.
_PLAIN_TARGET_LINE = rf"@?{_PLAIN_NAME_PATTERN}"
_PLAIN_TARGET_LINES = re.compile(rf"(?:{_PLAIN_TARGET_LINE}\n)*(?:{_PLAIN_TARGET_LINE})?", re.ASCII)
A_LABEL_PREFIX = "xn--"
_PLAIN_TARGETS_CHUNK = 32_768  # characters matched at a time (about 2 ms)
_QUEUE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_QUEUE_NAME_LENGTH - 1}}}\Z")
# RFC 5321 §4.1.3 address literals: IPv4 is digits and dots, IPv6 hex digits,
# colons and (for the IPv4-mapped forms) dots. Nothing else, so no zone id
# ("%eth0", which ``ipaddress`` accepts) or other text can ride along.
_IPV6_TAG = "ipv6:"
_IPV4_LITERAL_CHARS = re.compile(r"[0-9.]+\Z")
_IPV6_LITERAL_CHARS = re.compile(r"[0-9A-Fa-f:.]+\Z")


class TargetKind(enum.Enum):
    """What an ETRN argument names (RFC 1985 §5)."""

    NODE = "node"  # exactly this host/domain
    SUBTREE = "subtree"  # "@node": the node and every subdomain
    QUEUE = "queue"  # "#name": a named queue / queue group


class TargetError(ValueError):
    """The argument is not acceptable; ``reason`` is for the audit, never the reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingArgument(TargetError):
    """ETRN without an argument (RFC 1985 §5: 500 Syntax Error)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A validated ETRN target; ``name`` is lower-case A-labels (or a literal/queue)."""

    kind: TargetKind
    name: str

    def __hash__(self) -> int:
        # Equal targets have equal names; hashing the name alone keeps the
        # enum's Python-level __hash__ out of every index lookup.
        return hash(self.name)

    def __str__(self) -> str:
        if self.kind is TargetKind.SUBTREE:
            return OPTION_SUBTREE + self.name
        if self.kind is TargetKind.QUEUE:
            return OPTION_QUEUE + self.name
        return self.name

    @property
    def is_address_literal(self) -> bool:
        return self.name.startswith("[")

    def covers_domain(self, domain: str) -> bool:
        """Whether a recipient domain (already lower-case A-labels) is selected."""
        if self.kind is TargetKind.NODE:
            return domain == self.name
        if self.kind is TargetKind.SUBTREE:
            return domain == self.name or domain.endswith("." + self.name)
        return False


def parse_target(argument: str) -> Target:
    """Parse an ETRN argument as received (verb already removed).

    Leading and trailing blanks are tolerated (libESMTP sends ``ETRN  x``).
    Raises :class:`MissingArgument` for an empty argument and
    :class:`TargetError` for anything malformed.
    """
    text = argument.strip(" \t")
    if not text:
        raise MissingArgument("no argument")
    if text[0] == OPTION_QUEUE:
        return Target(TargetKind.QUEUE, parse_queue_name(text[1:]))
    if text[0] == OPTION_SUBTREE:
        name = text[1:]
        if name.startswith("["):
            raise TargetError("'@' cannot apply to an address literal")
        return Target(TargetKind.SUBTREE, parse_domain(name))
    if text.startswith("["):
        return Target(TargetKind.NODE, parse_address_literal(text))
    return Target(TargetKind.NODE, parse_domain(text))


def parse_plain_targets(text: str) -> list[Target] | None:
    """The targets of a file of plain names, one ``node`` or ``@node`` a line, as
    :func:`parse_target` reads each line; None when any line is anything else
    (blank, comment, trailing dot, long name, A-label, non-ASCII...): then parse
    line by line. One match per chunk of lines instead of one call per line."""
    start = 0
    while start < len(text):
        # Chunks of whole lines: a match holds the GIL, and a policy reload runs
        # this in a worker thread while the event loop answers sessions.
        end = text.find("\n", start + _PLAIN_TARGETS_CHUNK) + 1 or len(text)
        if not _PLAIN_TARGET_LINES.fullmatch(text, start, end):
            return None
        start = end
    lowered = text.lower()
    lines = lowered.splitlines()
    if A_LABEL_PREFIX in lowered or max(map(len, lines), default=0) > MAX_DOMAIN_LENGTH:
        return None
    return [
        Target(TargetKind.SUBTREE, line[1:])
        if line[0] == OPTION_SUBTREE
        else Target(TargetKind.NODE, line)
        for line in lines
    ]


def parse_queue_name(name: str) -> str:
    if not name:
        raise TargetError("empty queue name")
    if not _QUEUE_NAME.match(name):
        raise TargetError("queue name has characters outside [A-Za-z0-9_.-]")
    return name


def parse_domain(name: str) -> str:
    """Validate a host/domain name and return it as lower-case A-labels.

    Used for ETRN arguments and for every domain written in the policy, so the
    two are compared in the same canonical form.
    """
    plain = name[:-1] if name.endswith(".") else name
    if len(plain) <= MAX_DOMAIN_LENGTH and _PLAIN_NAME.match(plain):
        lowered = plain.lower()
        if A_LABEL_PREFIX not in lowered:
            return lowered
    _reject_unsafe_characters(name)
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise TargetError("empty domain")
    if not name.isascii():
        try:
            # UTS #46 mapping (case folding, width mapping), then IDNA 2008.
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise TargetError(f"invalid internationalized name: {exc}") from None
    name = name.lower()
    if len(name) > MAX_DOMAIN_LENGTH:
        raise TargetError(f"name longer than {MAX_DOMAIN_LENGTH} characters")
    for label in name.split("."):
        if not label:
            raise TargetError("empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise TargetError(f"label longer than {MAX_LABEL_LENGTH} characters")
        if not _LABEL.match(label):
            raise TargetError("label is not letters, digits and inner hyphens")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError as exc:
                raise TargetError(f"invalid A-label: {exc}") from None
    return name


def parse_address_literal(text: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3), normalised."""
    _reject_unsafe_characters(text)
    if not (text.startswith("[") and text.endswith("]")):
        raise TargetError("malformed address literal")
    inner = text[1:-1]
    try:
        if inner.lower().startswith(_IPV6_TAG):
            address = inner[len(_IPV6_TAG) :]
            if not _IPV6_LITERAL_CHARS.match(address):
                raise ValueError(address)
            v6 = ipaddress.IPv6Address(address)
            return f"[IPv6:{v6.compressed}]"
        if not _IPV4_LITERAL_CHARS.match(inner):
            raise ValueError(inner)
        v4 = ipaddress.IPv4Address(inner)
    except ValueError:
        raise TargetError("address literal is not an IPv4 or IPv6 address") from None
    return f"[{v4}]"


def _reject_unsafe_characters(text: str) -> None:
    # Decoded with surrogateescape by the listener: a lone surrogate means the
    # client sent bytes that are not UTF-8.
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise TargetError("argument is not valid UTF-8")
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            raise TargetError("control character in argument")
        if char.isspace():
            raise TargetError("white space inside argument")


def recipient_domain(address: str) -> str | None:
    """The recipient's domain as lower-case A-labels, comparable with ``Target.name``.

    Only the part after the last ``@`` counts (a local part may contain ``@``
    when quoted, and may look like a domain: ``customer.test@other.test``).
    None when the address has no domain or it is not a valid IDNA name.
    """
    address = address.strip().strip("<>")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return None
    domain = domain.rstrip(".")
    if not domain:
        return None
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None
