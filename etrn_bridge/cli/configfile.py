"""The ``-c FILE`` option every config-reading subcommand shares, and its error report."""

from __future__ import annotations

import argparse
import sys

from etrn_bridge.config import Config, ConfigError, load_config


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="the YAML configuration file")


def load_or_report(path: str) -> Config | None:
    """The config, or None after printing every problem (``file:line:col: key: message``)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
