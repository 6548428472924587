"""``etrn-bridge doctor``, plugin mode: does the MTA ask the configured hook?

For each hook in ``hooks:``, the MTA's side as its kit's plugin snippet sets it
(postfix/, exim/, sendmail/ READMEs): Postfix's smtpd_etrn_restrictions and
fast-flush eligibility, Exim's ETRN ACL, Sendmail's socketmap and check_etrn.
"""

from __future__ import annotations

import re

from etrn_bridge.backends.exim import PLUGIN_ETRN_COMMAND, SETTINGS_QUERY, EximBackend
from etrn_bridge.backends.mta import Finding, Level, MtaBackend, list_items, settings
from etrn_bridge.backends.postfix import PostfixBackend, fast_flush_eligible
from etrn_bridge.backends.sendmail import SendmailBackend
from etrn_bridge.config import Config
from etrn_bridge.frontends.sendmail_socketmap import RULESET_KEY
from etrn_bridge.hookconfig import HookEndpoint, HookSettings
from etrn_bridge.target import TargetKind

HOOK_BACKENDS = {"postfix_policy": PostfixBackend, "exim": EximBackend, "sendmail": SendmailBackend}
POSTFIX_ALL_ELIGIBLE = "static:all"
POSTFIX_SMTPD_OVERRIDE = "/inet"  # postconf -P names: "service/inet/parameter"


async def check_hooks(config: Config, backend: MtaBackend) -> list[Finding]:
    findings: list[Finding] = []
    for hook in config.hooks:
        expected = HOOK_BACKENDS[hook.name]
        if not isinstance(backend, expected):
            findings.append(
                Finding(
                    Level.FIX,
                    f"hooks.{hook.name} is asked by {expected.name}, but the backend is "
                    f"{backend.name}: the bridge would flush the wrong MTA",
                )
            )
        elif isinstance(backend, PostfixBackend):
            findings.extend(await _postfix(config, hook, backend))
        elif isinstance(backend, EximBackend):
            findings.extend(await _exim(hook, backend))
        elif isinstance(backend, SendmailBackend):
            findings.extend(_sendmail(hook, backend))
    return findings


def postfix_endpoint(endpoint: HookEndpoint) -> str:
    """How check_policy_service names the hook: unix:/path or inet:host:port."""
    if endpoint.path is not None:
        return f"unix:{endpoint.path}"
    return f"inet:{endpoint.host}:{endpoint.port}"


async def _postfix(config: Config, hook: HookSettings, backend: PostfixBackend) -> list[Finding]:
    main = await backend.run_sibling(
        "postconf", "-x", "smtpd_etrn_restrictions", "fast_flush_domains"
    )
    overrides = await backend.run_sibling("postconf", "-P")
    failed = next((result for result in (main, overrides) if not result.ok), None)
    if failed is not None:
        return [Finding(Level.FIX, f"postconf does not run: {failed.detail()}")]
    # main.cf, then each smtpd of master.cf with its own -o overrides
    services = {"main.cf": settings(main)}
    for name, value in settings(overrides).items():
        service, _, parameter = name.rpartition("/")
        if service.endswith(POSTFIX_SMTPD_OVERRIDE):
            services.setdefault(f"master.cf {service}", dict(services["main.cf"]))[parameter] = (
                value
            )
    wanted = f"check_policy_service {postfix_endpoint(hook.listen)}"
    asking = [where for where, conf in services.items() if wanted in " ".join(restrictions(conf))]
    if not asking:
        return [
            Finding(
                Level.FIX,
                f"no smtpd asks the bridge: set 'smtpd_etrn_restrictions = {wanted}, reject' "
                "(postfix/main.cf.plugin.snippet)",
            )
        ]
    findings = [Finding(Level.OK, f"Postfix asks {hook.listen} ({', '.join(asking)})")]
    for where in asking:
        conf = services[where]
        if restrictions(conf)[-1:] != ["reject"]:
            findings.append(
                Finding(
                    Level.FIX,
                    f"{where}: end smtpd_etrn_restrictions with 'reject': an answer of DUNNO "
                    "(or a bridge without an answer) must not fall through to Postfix's flush",
                )
            )
        findings.append(fast_flush_finding(config, where, conf.get("fast_flush_domains", "")))
    if not backend.flush_by_id:
        findings.append(
            Finding(
                Level.ADVICE,
                "set 'flush_by_id: true' in backend: Postfix flushes the site itself after the "
                "bridge's OK, and two site flushes in a row let its next arriving message skip "
                "defer_transports",
            )
        )
    return findings


def restrictions(conf: dict[str, str]) -> list[str]:
    # Postfix separates list items by commas and blanks (a colon is part of "unix:/path").
    return re.split(r"[\s,]+", conf.get("smtpd_etrn_restrictions", "").strip())


def fast_flush_finding(config: Config, where: str, value: str) -> Finding:
    """Postfix answers 459 itself, after the bridge's OK, for a domain not eligible."""
    listed = [item.lower() for item in list_items(value)]
    if value.strip() == POSTFIX_ALL_ELIGIBLE:
        return Finding(Level.OK, f"{where}: every domain is fast-flush eligible")
    if any("/" in item or ":" in item for item in listed):
        return Finding(
            Level.ADVICE,
            f"{where}: fast_flush_domains uses a table: make sure it lists every policy domain "
            f"(or use {POSTFIX_ALL_ELIGIBLE})",
        )
    missing = sorted(
        {
            target.name
            for entry in config.policy.allow
            for target in entry.targets
            if target.kind is not TargetKind.QUEUE
            and not fast_flush_eligible(target.name, listed, True)
        }
    )
    if not missing:
        return Finding(Level.OK, f"{where}: every policy domain is fast-flush eligible")
    return Finding(
        Level.FIX,
        f"{where}: set 'fast_flush_domains = {POSTFIX_ALL_ELIGIBLE}': after the bridge has "
        f"flushed, Postfix answers 459 for {', '.join(missing)}",
    )


async def _exim(hook: HookSettings, backend: EximBackend) -> list[Finding]:
    result = await backend.run(*SETTINGS_QUERY)
    if not result.ok:
        return [Finding(Level.FIX, f"exim -bP does not run: {result.detail()}")]
    conf = settings(result)
    findings = []
    if not conf.get("acl_smtp_etrn"):
        findings.append(
            Finding(
                Level.FIX,
                "set acl_smtp_etrn to the kit's ACL (exim/main.conf.plugin.snippet, "
                f"exim/acl.plugin.snippet reading {hook.listen})",
            )
        )
    else:
        findings.append(Finding(Level.OK, f"Exim's ETRN ACL: {conf['acl_smtp_etrn']}"))
    if conf.get("smtp_etrn_command") != PLUGIN_ETRN_COMMAND:
        findings.append(
            Finding(
                Level.FIX,
                f"set 'smtp_etrn_command = {PLUGIN_ETRN_COMMAND}': the bridge has flushed "
                "exactly; anything else runs after it (exim -R is a substring match)",
            )
        )
    if conf.get("smtp_etrn_serialize") != "false":
        findings.append(
            Finding(
                Level.ADVICE,
                "set 'smtp_etrn_serialize = false': a second ETRN for the same node gets "
                "Exim's '458 Already processing' while /bin/true runs",
            )
        )
    return findings


def _sendmail(hook: HookSettings, backend: SendmailBackend) -> list[Finding]:
    path = backend.config_file()
    try:
        with open(path, encoding="utf-8", errors="replace") as cf:
            lines = cf.read().splitlines()
    except OSError as exc:
        return [Finding(Level.ADVICE, f"cannot read {path} ({exc.strerror}): not checked")]
    endpoint = (
        f"local:{hook.listen.path}"
        if hook.listen.path is not None
        else f"inet:{hook.listen.port}@{hook.listen.host}"
    )
    declared = [line for line in lines if line.startswith(f"K{hook.map} socket ")]
    findings = []
    if not declared:
        return [
            Finding(
                Level.FIX,
                f"{path} declares no socketmap {hook.map!r}: add the kit's K line "
                f"(sendmail/sendmail.mc.plugin.snippet) with {endpoint}",
            )
        ]
    options = declared[0].split()
    if options[-1] != endpoint:
        findings.append(
            Finding(Level.FIX, f"map {hook.map} connects to {options[-1]}, the hook is {endpoint}")
        )
    else:
        findings.append(Finding(Level.OK, f"socketmap {hook.map} asks {endpoint}"))
    if "-f" not in options:
        findings.append(
            Finding(Level.FIX, f"declare map {hook.map} with -f: else keys are lower-cased")
        )
    if not any(option.startswith("-d") for option in options):
        findings.append(
            Finding(
                Level.FIX,
                f"declare map {hook.map} with a timeout (-d5s): Sendmail waits for ever",
            )
        )
    if "Scheck_etrn" not in lines:
        findings.append(
            Finding(Level.FIX, f"{path} has no check_etrn ruleset: Sendmail's own ETRN runs")
        )
    elif not any(f"$({hook.map} {RULESET_KEY} $:" in line for line in lines):
        findings.append(
            Finding(
                Level.FIX,
                f"check_etrn does not look up {hook.map} with the kit's key "
                f"'{RULESET_KEY}': the bridge refuses every ETRN "
                "(sendmail/sendmail.mc.plugin.snippet)",
            )
        )
    if "O CertFingerprintAlgorithm=sha256" not in lines:
        findings.append(
            Finding(
                Level.ADVICE,
                "CertFingerprintAlgorithm is not sha256: {cert_fp} stays empty and "
                "tls_fingerprints never match through Sendmail",
            )
        )
    return findings
