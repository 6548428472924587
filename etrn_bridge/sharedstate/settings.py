"""The ``cluster:`` section: its settings, JSON Schema fragment and parser."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Redis URL schemes redis-py reads (redis://, rediss:// with TLS, unix://) and the
# sentinel form this module adds: redis+sentinel://host:port[,host:port]/service[/db].
URL_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
# A node name is part of Redis key and channel names: no spaces, colons or braces.
NODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m)$"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0}
DEFAULT_FANOUT_TIMEOUT = "5s"
ON_FAILURE_LOCAL = "local"  # flush this node only, with this node's own limits
ON_FAILURE_TEMPFAIL = "tempfail"  # 458: the client retries later


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A redis+sentinel:// URL taken apart: where the sentinels are, which master."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int


def parse_sentinel_url(url: str) -> SentinelAddress:
    """``redis+sentinel://h1:26379,h2:26379/mymaster/0``; raises ValueError."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item!r}: a sentinel is host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path is /service-name[/db]")
    return SentinelAddress(tuple(sentinels), path[0], int(path[1]) if len(path) == 2 else 0)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    redis: str
    node: str
    fanout_timeout: float = 5.0
    on_redis_failure: str = ON_FAILURE_LOCAL


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()


def default_node() -> str:
    """This host's short name, made key-safe."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])
    return name[:63] or "node"


def parse_duration(text: str) -> float:
    """``"5s"`` -> 5.0, ``"500ms"`` -> 0.5; raises ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not '<number><ms|s|m>'")
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError(f"{text!r}: must be longer than zero")
    return seconds


CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["redis"],
    "description": "Several MX hosts as one (off when absent): per_client, per_target and "
    "max_concurrent_flushes hold across every worker and node through Redis, and an "
    "allowed ETRN flushes the target from every live node's queue with that node's own "
    "backend. Read at start (a SIGHUP does not change it).",
    "properties": {
        "redis": {
            "type": "string",
            "minLength": 1,
            "description": "Redis URL: redis://[user:password@]host:port/db, rediss:// (TLS), "
            "unix:///path?db=N, or redis+sentinel://host:port[,host:port]/service[/db] (a "
            "Sentinel-managed master). Every node names the same Redis.",
        },
        "node": {
            "type": "string",
            "pattern": NODE_PATTERN,
            "description": "This node's name, unique in the cluster (audit records and "
            "doctor name it). Default: the host name. The workers of one host share it.",
        },
        "fanout_timeout": {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "default": DEFAULT_FANOUT_TIMEOUT,
            "description": "How long the node that received an ETRN waits for every node's "
            "flush report before it answers; a node that has not answered by then makes "
            "the reply 250 (count unknown).",
        },
        "on_redis_failure": {
            "type": "string",
            "enum": [ON_FAILURE_LOCAL, ON_FAILURE_TEMPFAIL],
            "default": ON_FAILURE_LOCAL,
            "description": "When Redis cannot be reached: 'local' flushes this node's queue "
            "only, under this node's own limits, logs a warning and marks the audit record "
            "(cluster_fallback); 'tempfail' answers 458. Redis is retried on every request.",
        },
    },
}

ClusterProblem = Callable[[tuple[str, ...], str], None]


def parse_cluster(
    section: Mapping[str, Any] | None, problem: ClusterProblem
) -> ClusterSettings | None:
    """The ``cluster:`` section, or None when absent; shape errors are the schema's."""
    if not isinstance(section, Mapping):
        return None
    url = section.get("redis")
    if not isinstance(url, str):
        return None  # the schema reported it
    scheme = urlsplit(url).scheme
    if scheme not in URL_SCHEMES:
        problem(("redis",), f"the URL scheme must be one of {', '.join(URL_SCHEMES)}")
    elif scheme in SENTINEL_SCHEMES:
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            problem(("redis",), str(exc))
    fanout = section.get("fanout_timeout", DEFAULT_FANOUT_TIMEOUT)
    if not isinstance(fanout, str) or not re.match(DURATION_PATTERN, fanout):
        fanout = DEFAULT_FANOUT_TIMEOUT  # the schema reported the shape
    try:
        timeout = parse_duration(fanout)
    except ValueError as exc:
        problem(("fanout_timeout",), str(exc))
        timeout = parse_duration(DEFAULT_FANOUT_TIMEOUT)
    node = section.get("node")
    on_failure = section.get("on_redis_failure", ON_FAILURE_LOCAL)
    return ClusterSettings(
        redis=url,
        node=node if isinstance(node, str) else default_node(),
        fanout_timeout=timeout,
        on_redis_failure=on_failure if isinstance(on_failure, str) else ON_FAILURE_LOCAL,
    )
