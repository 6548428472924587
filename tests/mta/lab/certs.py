#!/usr/bin/env python3
"""TLS certificates for the lab's MTAs and their clients (needs trustme).

  certs.py DIR     write, once, into DIR:
    ca.pem                  the lab CA (the MTAs verify client certificates with it)
    server.pem, server.key  the MTAs' certificate (127.0.0.1, mta-lab.test), from the lab CA
    client.pem              a customer's client certificate and key, from the lab CA
    stranger.pem            a client certificate and key from another CA (a wrong one)

An existing DIR is left alone, so the MTAs and the tests agree on one set.
"""

import sys
from pathlib import Path

import trustme


def main(directory: Path) -> None:
    if (directory / "stranger.pem").exists():
        return
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="etrn-bridge mta lab")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "mta-lab.test")
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    ca.issue_cert("customer.test").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "client.pem")
    )
    other = trustme.CA(organization_name="not the lab")
    other.issue_cert("customer.test").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "stranger.pem")
    )
    for path in directory.iterdir():
        path.chmod(0o600 if path.suffix == ".key" or path.stem in ("client", "stranger") else 0o644)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
