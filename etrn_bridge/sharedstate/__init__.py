"""Shared state: per-client limits, per-target coalescing, flush slots and fan-out.

The service talks to one small interface (:class:`~etrn_bridge.sharedstate.base.SharedState`):
:class:`~etrn_bridge.sharedstate.local.LocalState` keeps it in the process (one
host, the default); :class:`~etrn_bridge.sharedstate.redisstate.RedisState` keeps
it in Redis, so limits hold across workers and MX hosts and an allowed ETRN
flushes the target on every live node (``cluster:``).
"""

from __future__ import annotations

from etrn_bridge.sharedstate.base import SharedState
from etrn_bridge.sharedstate.local import LocalState
from etrn_bridge.sharedstate.redisstate import RedisState
from etrn_bridge.sharedstate.settings import ClusterSettings


def create_shared_state(cluster: ClusterSettings | None, max_concurrent: int) -> SharedState:
    """Redis-backed when ``cluster:`` is configured, this process's own otherwise."""
    if cluster is None:
        return LocalState(max_concurrent)
    return RedisState(cluster, max_concurrent)
