"""Fuzzed ETRN arguments over real sessions against a real ``etrn-bridge serve``.

    python bench/fuzz.py [--arguments 100000] [--per-session 100] [--concurrency 50] [--seed 1]

The command backend runs a shell script that appends its argv (NUL-separated)
to a file, so every argument that reached a backend is seen exactly as the
program got it. Arguments are mutations of allowed targets: hostile bytes
(NUL, CR, shell metacharacters, non-UTF-8, IPv6 zone ids, Unicode line
separators), case, dots, brackets, prefixes, over-long lines. Each session
sends EHLO, its ETRNs pipelined in one write, QUIT.

Prints the figures, then checks: the server never crashed (no traceback, no
internal error, exit status 0), every argv element matches the whitelist,
and audit lines == ETRNs sent == replies received. Exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "integration")]

from bridgekit import launch_bridge  # noqa: E402

FD_LIMIT = 8192
ALLOWED = ["customer.example", "@customer.net", "#customerq", "[127.0.0.1]", "[IPv6:::1]"]
SEEDS = [
    *ALLOWED,
    "sub.customer.net",
    "a.b.customer.net",
    "CUSTOMER.Example.",
    "bücher.customer.net",
    "xn--bcher-kva.customer.net",
    "[IPv6:0:0:0:0:0:0:0:1]",
    "other.example",
    "#otherq",
]
HOSTILE = [
    b"\x00",
    b"\r",
    b"\t",
    b" ",
    b";",
    b"|",
    b"&",
    b"$(id)",
    b"`id`",
    b"'",
    b'"',
    b"\\",
    b"%",
    b"%eth0",
    b"*",
    b"?",
    b"/",
    b"..",
    b"-",
    b"_",
    b"@",
    b"#",
    b"[",
    b"]",
    b":",
    b"\xff",
    b"\xc3",
    b"\xe2\x80\xa8",
    b"\xef\xbb\xbf",
    b"\x7f",
    b"\x1b[2J",
    b"{target}",
    b"--",
    b"-qf",
    b"\xd8\x00",
    b"IPv6:",
    b"%25",
    b"\x85",
]
# What may reach a program: the template's kind, then the target and its RFC 1985 form.
KINDS = {"node", "subtree", "queue"}
TARGET = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"|\[(?:IPv6:[0-9a-f:.]+|[0-9.]+)\]|[A-Za-z0-9][A-Za-z0-9_.-]*)\Z"
)
FLUSH_SCRIPT = "#!/bin/sh\nprintf '%s\\0' \"$@\" '' >> {out}\n"


def mutate(rng: random.Random) -> bytes:
    text = rng.choice(SEEDS).encode("utf-8")
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 5])):
        position = rng.randrange(len(text) + 1)
        action = rng.random()
        if action < 0.5:
            text = text[:position] + rng.choice(HOSTILE) + text[position:]
        elif action < 0.7:
            text = text[:position] + text[position + 1 :]
        elif action < 0.8:
            text = text.swapcase()
        elif action < 0.9:
            text = text[:position] + bytes([rng.randrange(1, 256)]) + text[position:]
        else:
            text = text + b"." + b"a" * rng.choice([1, 63, 64, 300, 700])
    return text.replace(b"\n", b"")  # one argument, one command line


async def session(host: str, port: int, arguments: list[bytes]) -> list[int]:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    codes = []
    try:
        await reader.readline()
        burst = b"EHLO fuzz.test\r\n" + b"".join(b"ETRN " + a + b"\r\n" for a in arguments)
        writer.write(burst + b"QUIT\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            if line[3:4] == b" ":
                codes.append(int(line[:3]))
    finally:
        writer.close()
    return codes[1:-1]  # without EHLO and QUIT


async def run_sessions(
    host: str, port: int, batches: list[list[bytes]], concurrency: int
) -> list[list[int]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(batch: list[bytes]) -> list[int]:
        async with gate:
            return await session(host, port, batch)

    return await asyncio.gather(*(one(batch) for batch in batches))


def read_argvs(path: Path) -> list[list[bytes]]:
    if not path.exists():
        return []
    records = path.read_bytes().split(b"\0\0")
    return [record.split(b"\0") for record in records if record]


def argv_problems(argv: list[bytes]) -> list[str]:
    try:
        kind, target, etrn = (element.decode("ascii") for element in argv)
    except (UnicodeDecodeError, ValueError):
        return [f"not three ASCII elements: {argv!r}"]
    problems = []
    if kind not in KINDS:
        problems.append(f"kind {kind!r}")
    if not TARGET.match(target):
        problems.append(f"target {target!r}")
    prefix = {"node": "", "subtree": "@", "queue": "#"}.get(kind, "?")
    if etrn != prefix + target:
        problems.append(f"etrn {etrn!r} for {kind} {target!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arguments", type=int, default=100_000)
    parser.add_argument("--per-session", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))  # server inherits
    rng = random.Random(args.seed)
    arguments = [mutate(rng) for _ in range(args.arguments)]
    batches = [
        arguments[i : i + args.per_session] for i in range(0, len(arguments), args.per_session)
    ]

    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        argv_file = directory / "argv.bin"
        script = directory / "flush.sh"
        script.write_text(FLUSH_SCRIPT.format(out=argv_file))
        script.chmod(0o755)
        bridge = launch_bridge(
            directory,
            {
                "backend": {
                    "type": "command",
                    "argv": [str(script), "{kind}", "{target}", "{etrn}"],
                },
                "session": {
                    "max_etrn": args.per_session,
                    "max_bad_commands": 10 * args.per_session,
                },
                "connections": {"max_sessions_per_client": args.concurrency * 2},
                "limits": {"per_client": "off", "per_target": "off", "max_concurrent_flushes": 8},
            },
        )
        started = time.perf_counter()
        try:
            results = asyncio.run(run_sessions(bridge.host, bridge.port, batches, args.concurrency))
        finally:
            elapsed = time.perf_counter() - started
            exit_status = bridge.stop(timeout=120)
        audit_lines = bridge.audit_path.read_text().splitlines()
        records = [json.loads(line) for line in audit_lines]
        argvs = read_argvs(argv_file)
        log = bridge.log_lines

    etrn_records = [r for r in records if r.get("event") == "etrn"]
    replies = Counter(code for codes in results for code in codes)
    bad_argvs = [(argv, p) for argv in argvs if (p := argv_problems(argv))]
    crashes = [line for line in log if "Traceback" in line or "internal error" in line]
    print(
        f"arguments sent:     {len(arguments)} in {len(batches)} sessions "
        f"({args.concurrency} at once), {elapsed:.1f} s, "
        f"{len(arguments) / elapsed:.0f} ETRN/s"
    )
    print(
        f"replies received:   {sum(replies.values())}  "
        + " ".join(f"{code}:{count}" for code, count in sorted(replies.items()))
    )
    print(f"audit etrn records: {len(etrn_records)} (audit lines: {len(audit_lines)})")
    coalesced = sum(1 for record in etrn_records if record["coalesced"])
    print(
        f"backend runs:       {len(argvs)} ({len({tuple(a) for a in argvs})} distinct argvs); "
        f"ETRN answered by a flush already running: {coalesced}"
    )
    print(f"argv off whitelist: {len(bad_argvs)}")
    print(f"crashes:            {len(crashes)}  server exit status: {exit_status}")
    for argv, problems in bad_argvs[:10]:
        print(f"  {argv!r}: {problems}")
    for line in crashes[:10]:
        print(f"  {line}")
    ok = (
        not bad_argvs
        and not crashes
        and exit_status == 0
        and len(etrn_records) == len(arguments) == sum(replies.values())
    )
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
