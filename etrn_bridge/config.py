"""Whole-file configuration: load, validate, and build typed settings.

The JSON Schema in ``schema.py`` is the single description of the file: the
loader validates against it (so ``etrn-bridge schema`` and the loader cannot
drift), then the sections are checked for meaning (CIDRs, domains, duplicate
ids, backend options) and every problem is reported with file:line:column and
its key path, all of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etrn_bridge import bulkschema, defaults
from etrn_bridge.admission import ConnectionSettings
from etrn_bridge.backends.base import BackendOptionError, create_backend
from etrn_bridge.collector import collector_paused
from etrn_bridge.feeds.settings import MilterSettings, parse_milter
from etrn_bridge.hookconfig import HookSettings, parse_hooks
from etrn_bridge.metrics.settings import MetricsSettings
from etrn_bridge.policy.compile import PolicyProblem, compile_policy
from etrn_bridge.policy.limits import LimitSettings, parse_limits
from etrn_bridge.policy.model import Policy
from etrn_bridge.queueindex.settings import IndexSettings, parse_index
from etrn_bridge.schema import config_schema
from etrn_bridge.sharedstate.settings import ClusterSettings, parse_cluster
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
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    tls: TlsSettings | None = None
    auth: AuthSettings | None = None
    user: str | None = None  # drop to this user after binding the ports
    workers: int = 1  # serving processes forked by `serve`
    event_loop: str = "asyncio"  # or "uvloop" (optional extra)
    metrics: MetricsSettings | None = None  # None: no metrics endpoint
    index: IndexSettings | None = None  # the queue index; None: list the queue
    cluster: ClusterSettings | None = None  # several MX hosts sharing state through Redis
    hooks: tuple[HookSettings, ...] = ()  # plugin mode (hookconfig.py)
    milter: MilterSettings | None = None  # the index feeds of `etrn-bridge milter`


def load_config(path: str | Path, leftovers: list[Any] | None = None) -> Config:
    """Read and validate a config file; raises :class:`ConfigError` listing every problem.

    With ``leftovers``, the parse tree goes there instead of being freed on return
    (a reload frees it with ``release.release_gradually``, off the event loop)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(Mark(str(file), 1, 1), (), f"cannot read: {exc}")]) from None
    return parse_config(text, file, leftovers)


def parse_config(text: str, file: Path, leftovers: list[Any] | None = None) -> Config:
    with collector_paused():
        return _parse_config(text, file, [] if leftovers is None else leftovers)


def _parse_config(text: str, file: Path, leftovers: list[Any]) -> Config:
    try:
        document = load_marked(text, str(file))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = Mark(str(file), mark.line + 1, mark.column + 1) if mark else Mark(str(file), 1, 1)
        raise ConfigError([Problem(where, (), f"YAML syntax: {exc}")]) from None
    leftovers.append(document)
    if not isinstance(document.data, dict):
        raise ConfigError([Problem(document.mark(()), (), "the file must be a mapping of keys")])
    problems = _schema_problems(document)
    # Meaning is checked even when the shape is not right, so one run lists everything.
    sections = _check_sections(document, file, {p.path[0] for p in problems if p.path}, problems)
    if problems:
        problems.sort(
            key=lambda p: (p.mark.file != str(file), p.mark.file, p.mark.line, p.mark.column)
        )
        raise ConfigError(problems)
    return _build(document.data, file, sections)


def _schema_problems(document: MarkedDocument) -> list[Problem]:
    problems = [
        Problem(mark, path, "duplicate key (the later value would silently win)")
        for path, mark in document.duplicate_keys
    ]
    for error in bulkschema.iter_errors(config_schema(), document.data):
        path = tuple(error.path)
        if (
            error.validator == "additionalProperties"
            and isinstance(error.instance, dict)
            and isinstance(error.schema, Mapping)
        ):
            # Name each unknown key at its own line, not at the mapping that holds it.
            known = set(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - known):
                key_path = (*path, key)
                problems.append(Problem(document.key_mark(key_path), key_path, _unknown(known)))
        else:
            problems.append(Problem(document.mark(path), path, error.message))
    return problems


def _unknown(known: set[str]) -> str:
    return "unknown key" + (f" (known here: {', '.join(sorted(known))})" if known else "")


@dataclass(frozen=True, slots=True)
class _CheckedSections:
    policy: Policy
    limits: LimitSettings
    cluster: ClusterSettings | None
    hooks: tuple[HookSettings, ...]


def _check_sections(
    document: MarkedDocument, file: Path, bad_sections: set[str | int], problems: list[Problem]
) -> _CheckedSections:
    data: dict[str, Any] = document.data

    def problem(path: KeyPath, message: str) -> None:
        problems.append(Problem(document.mark(path), path, message))

    backend = data.get("backend", {"type": defaults.BACKEND})
    if "backend" not in bad_sections:
        try:
            create_backend(backend)
        except BackendOptionError as exc:
            problem(("backend", exc.key) if exc.key else ("backend",), exc.message)

    policy_section = data.get("policy", {})
    policy_problems: list[PolicyProblem] = []
    policy = compile_policy(
        policy_section if isinstance(policy_section, dict) else {},
        base_dir=file.parent,
        problems=policy_problems,
    )
    for found in policy_problems:
        path = ("policy", *found.path)
        problems.append(Problem(found.mark or document.mark(path), path, found.message))

    limits_section = data.get("limits", {})
    limits = parse_limits(
        limits_section if isinstance(limits_section, dict) else {},
        lambda key, message: problem(("limits", *key), message),
    )
    if data.get("auth") is not None and data.get("tls") is None:
        problem(("auth",), "AUTH is offered only after STARTTLS: configure tls too")
    _check_matchers_can_match(data, problem)
    hooks_section = data.get("hooks", {})
    hooks = parse_hooks(
        hooks_section if isinstance(hooks_section, dict) else {},
        lambda key, message: problem(("hooks", *key), message),
    )
    cluster = parse_cluster(
        data.get("cluster"), lambda key, message: problem(("cluster", *key), message)
    )
    return _CheckedSections(policy, limits, cluster, hooks)


def _check_matchers_can_match(
    data: dict[str, Any], problem: Callable[[KeyPath, str], None]
) -> None:
    """A ``users`` matcher without AUTH, or ``tls_fingerprints`` without client
    certificates, can never match: the entry would silently never apply. Every MTA
    hook passes the AUTH identity and certificate fingerprint the MTA saw."""
    policy = data.get("policy")
    if not isinstance(policy, dict) or data.get("hooks"):
        return
    tls = data.get("tls")
    missing = {
        "users": None if data.get("auth") else "no client can authenticate: configure auth",
        "tls_fingerprints": None
        if isinstance(tls, dict) and tls.get("client_ca")
        else "no client certificate is requested: configure tls.client_ca",
    }
    for section in ("clients", "deny"):
        entries = policy.get(section)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            for matcher, reason in missing.items():
                if reason and isinstance(entry, dict) and entry.get(matcher):
                    problem(("policy", section, index, matcher), f"can never match: {reason}")


def _build(data: dict[str, Any], file: Path, sections: _CheckedSections) -> Config:
    base_dir = file.parent
    audit_data = data.get("audit", {})
    tls_data = data.get("tls")
    auth_data = data.get("auth")
    return Config(
        path=file,
        # With a hook and no 'listen', the process serves the hooks only.
        listen=tuple(
            _listen_address(text)
            for text in data.get("listen", () if sections.hooks else defaults.LISTEN)
        ),
        hostname=data.get("hostname", defaults.hostname()),
        backend=data.get("backend", {"type": defaults.BACKEND}),
        policy=sections.policy,
        limits=sections.limits,
        audit=AuditSettings(
            file=_path(base_dir, audit_data.get("file")),
            syslog=audit_data.get("syslog", False),
            syslog_address=audit_data.get("syslog_address", defaults.SYSLOG_ADDRESS),
        ),
        session=SessionSettings(**data.get("session", {})),
        connections=ConnectionSettings.from_section(data.get("connections", {})),
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
        user=data.get("user"),
        workers=data.get("workers", 1),
        event_loop=data.get("event_loop", "asyncio"),
        metrics=_metrics(data.get("metrics")),
        index=parse_index(data.get("index"), base_dir),
        cluster=sections.cluster,
        hooks=sections.hooks,
        milter=parse_milter(data.get("milter")),
    )


def _path(base_dir: Path, value: str | None) -> Path | None:
    return None if value is None else base_dir / value


def _metrics(section: dict[str, Any] | None) -> MetricsSettings | None:
    if section is None:
        return None
    address = _listen_address(section["listen"])
    return MetricsSettings(address.host, address.port)


def _listen_address(text: str) -> ListenAddress:
    # The schema's pattern has already checked the shape "host:port" / "[v6]:port".
    host, _, port = text.rpartition(":")
    return ListenAddress(host.strip("[]"), int(port))
