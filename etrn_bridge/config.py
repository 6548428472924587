"""Whole-file configuration: load, validate, and build typed settings.

The JSON Schema in ``schema.py`` is the single description of the file: the
loader validates against it (so ``etrn-bridge schema`` and the loader cannot
drift), then the sections are checked for meaning (CIDRs, domains, duplicate
ids, backend options) and every problem is reported with file:line:column and
its key path, all of them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from etrn_bridge import defaults
from etrn_bridge.backends.base import BackendOptionError, create_backend
from etrn_bridge.policy.compile import PolicyProblem, compile_policy
from etrn_bridge.policy.limits import LimitSettings, parse_limits
from etrn_bridge.policy.model import Policy
from etrn_bridge.schema import config_schema
from etrn_bridge.yamlmarks import KeyPath, Mark, MarkedDocument, format_path, load_marked


@dataclass(frozen=True, slots=True)
class Problem:
    mark: Mark
    path: KeyPath
    message: str

    def __str__(self) -> str:
        return f"{self.mark}: {format_path(self.path)}: {self.message}"


class ConfigError(Exception):
    """The file cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert: Path
    key: Path
    client_ca: Path | None = None  # verify client certificates against this CA


@dataclass(frozen=True, slots=True)
class AuthSettings:
    passwords_file: Path


@dataclass(frozen=True, slots=True)
class SessionSettings:
    idle_timeout: float = defaults.IDLE_TIMEOUT
    max_line_length: int = defaults.MAX_COMMAND_LINE
    max_etrn: int = defaults.MAX_ETRN_PER_SESSION
    max_bad_commands: int = defaults.MAX_BAD_COMMANDS


@dataclass(frozen=True, slots=True)
class AuditSettings:
    file: Path | None = None
    syslog: bool = False
    syslog_address: str = defaults.SYSLOG_ADDRESS


@dataclass(frozen=True)
class Config:
    path: Path
    listen: tuple[ListenAddress, ...]
    hostname: str
    backend: Mapping[str, Any]
    policy: Policy
    limits: LimitSettings
    audit: AuditSettings = field(default_factory=AuditSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    tls: TlsSettings | None = None
    auth: AuthSettings | None = None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises :class:`ConfigError` listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(Mark(str(file), 1, 1), (), f"cannot read: {exc}")]) from None
    return parse_config(text, file)


def parse_config(text: str, file: Path) -> Config:
    try:
        document = load_marked(text, str(file))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = Mark(str(file), mark.line + 1, mark.column + 1) if mark else Mark(str(file), 1, 1)
        raise ConfigError([Problem(where, (), f"YAML syntax: {exc}")]) from None
    problems = _schema_problems(document)
    if problems:
        raise ConfigError(problems)
    return _build(document, file)


def _schema_problems(document: MarkedDocument) -> list[Problem]:
    problems = [
        Problem(mark, path, "duplicate key (the later value would silently win)")
        for path, mark in document.duplicate_keys
    ]
    validator = jsonschema.Draft202012Validator(config_schema())
    for error in sorted(validator.iter_errors(document.data), key=lambda e: list(e.path)):
        path = tuple(error.path)
        problems.append(Problem(document.mark(path), path, _schema_message(error)))
    return problems


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return f"unknown key: {error.message}"
    return error.message


def _build(document: MarkedDocument, file: Path) -> Config:
    data: dict[str, Any] = document.data
    problems: list[Problem] = []
    base_dir = file.parent

    def problem(path: KeyPath, message: str) -> None:
        problems.append(Problem(document.mark(path), path, message))

    listen = tuple(_listen_address(text) for text in data.get("listen", defaults.LISTEN))
    backend = data.get("backend", {"type": defaults.BACKEND})
    try:
        create_backend(backend)
    except BackendOptionError as exc:
        key_path: KeyPath = ("backend", exc.key) if exc.key else ("backend",)
        problem(key_path, exc.message)

    policy_problems: list[PolicyProblem] = []
    policy = compile_policy(data.get("policy", {}), base_dir=base_dir, problems=policy_problems)
    for policy_problem in policy_problems:
        problem(("policy", *policy_problem.path), policy_problem.message)
    limits = parse_limits(data.get("limits", {}))

    audit_data = data.get("audit", {})
    tls_data = data.get("tls")
    auth_data = data.get("auth")
    session_data = data.get("session", {})
    if auth_data is not None and tls_data is None:
        problem(("auth",), "AUTH is offered only after STARTTLS: configure tls too")
    if problems:
        raise ConfigError(problems)
    return Config(
        path=file,
        listen=listen,
        hostname=data.get("hostname", defaults.hostname()),
        backend=backend,
        policy=policy,
        limits=limits,
        audit=AuditSettings(
            file=_path(base_dir, audit_data.get("file")),
            syslog=audit_data.get("syslog", False),
            syslog_address=audit_data.get("syslog_address", defaults.SYSLOG_ADDRESS),
        ),
        session=SessionSettings(**session_data),
        tls=TlsSettings(
            cert=base_dir / tls_data["cert"],
            key=base_dir / tls_data["key"],
            client_ca=_path(base_dir, tls_data.get("client_ca")),
        )
        if tls_data
        else None,
        auth=AuthSettings(passwords_file=base_dir / auth_data["passwords_file"])
        if auth_data
        else None,
    )


def _path(base_dir: Path, value: str | None) -> Path | None:
    return None if value is None else base_dir / value


def _listen_address(text: str) -> ListenAddress:
    # The schema's pattern has already checked the shape "host:port" / "[v6]:port".
    host, _, port = text.rpartition(":")
    return ListenAddress(host.strip("[]"), int(port))
