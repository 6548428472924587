"""The hooks of one ``serve`` process: bound before privileges drop, served beside the listener."""

from __future__ import annotations

import asyncio
import logging

from etrn_bridge.config import Config
from etrn_bridge.frontends.exim_hook import EximHook
from etrn_bridge.frontends.hookserver import HookProtocol, HookServer, bind_hook
from etrn_bridge.frontends.postfix_policy import PostfixPolicy
from etrn_bridge.frontends.sendmail_socketmap import SendmailSocketmap
from etrn_bridge.hookconfig import HookSettings
from etrn_bridge.service import Service

log = logging.getLogger("etrn_bridge.hooks")


def protocol_for(settings: HookSettings) -> HookProtocol:
    if settings.name == "postfix_policy":
        return PostfixPolicy()
    if settings.name == "exim":
        return EximHook()
    return SendmailSocketmap(settings.map)


class Hooks:
    """Every configured hook of one process."""

    def __init__(self, servers: list[HookServer]) -> None:
        self.servers = servers

    @classmethod
    def bind(cls, config: Config, service: Service) -> Hooks:
        """Bind every hook socket (as root, before privileges are dropped)."""
        servers: list[HookServer] = []
        try:
            for settings in config.hooks:
                sock = bind_hook(settings)
                servers.append(HookServer(settings, protocol_for(settings), service, config, sock))
        except BaseException:
            cls(servers).close()
            raise
        return cls(servers)

    async def serve(self) -> None:
        for server in self.servers:
            await server.serve()
            log.info("hook %s listening on %s", server.name, server.settings.listen)

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(server.stop(grace) for server in self.servers))

    def close(self) -> None:
        """Close the sockets without serving (a failed start, or a supervising parent)."""
        for server in self.servers:
            server.socket.close()
