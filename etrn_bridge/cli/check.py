"""``etrn-bridge check -c FILE``: every problem of a config file, or a summary of it."""

from __future__ import annotations

import argparse

from etrn_bridge.backends.base import create_backend, installation_problems
from etrn_bridge.cli.configfile import add_config_argument
from etrn_bridge.config import Config, ConfigError, load_config
from etrn_bridge.sharedstate.settings import ClusterSettings, redacted


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a config file; list every problem with file:line:column"
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return report_errors(args.config, [str(problem) for problem in exc.problems])
    # The file is valid; can its backend run on this machine?
    problems = installation_problems(create_backend(config.backend))
    if problems:
        return report_errors(args.config, [f"{args.config}: backend.{p}" for p in problems])
    print(summary(config))
    return 0


def report_errors(path: str, messages: list[str]) -> int:
    for message in messages:
        print(message)
    count = len(messages)
    print(f"{path}: {count} error{'s' if count != 1 else ''}")
    return 1


def summary(config: Config) -> str:
    counts = config.policy.summary()
    limits = config.limits
    hooks = [f"{hook.frontend} on {hook.listen}" for hook in config.hooks]
    return "\n".join(
        [
            f"{config.path}: OK",
            f"  listen:   {', '.join(str(address) for address in config.listen) or 'none'}",
            *([f"  hooks:    {', '.join(hooks)}"] if hooks else []),
            f"  backend:  {config.backend.get('type')}",
            f"  policy:   {counts['clients']} clients entries, {counts['deny']} deny entries, "
            f"{counts['targets']} targets, {counts['networks']} networks, "
            f"{counts['users']} users, {counts['tls_fingerprints']} TLS fingerprints",
            f"  limits:   per_target {limits.per_target or 'off'}, "
            f"per_client {limits.per_client or 'off'}, "
            f"max_concurrent_flushes {limits.max_concurrent_flushes}",
            *([cluster_summary(config.cluster)] if config.cluster else []),
        ]
    )


def cluster_summary(cluster: ClusterSettings) -> str:
    return (
        f"  cluster:  node {cluster.node}, Redis {redacted(cluster.redis)}, "
        f"fanout_timeout {cluster.fanout_timeout:g}s, on_redis_failure {cluster.on_redis_failure}"
    )
