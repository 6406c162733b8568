"""A real gRPC server (in process) under the shipped caller policy, a token per caller.

tests/stack.py serves one all-powerful test caller; the tests that must call as the
callers of vault/access/default_callers.toml (billing, control-panel, support, ...) use this.
"""

from __future__ import annotations

from dataclasses import dataclass

from kms.base import KeyManager
from tests.stack import vault_service
from vault.access.authentication import Authenticator, token_hash
from vault.access.caller_policy import CallerPolicy
from vault.app.config import ServerConfig
from vault.app.server import RunningServer, start_server
from vault.storage import Storage, make_engine, migrate
from vault.usecases.service import VaultService

POLICY = CallerPolicy.load()
CALLERS = tuple(sorted(POLICY.callers))
TOKENS = {caller: f"token-of-{caller}-for-the-suite" for caller in CALLERS}


@dataclass
class CallersServer:
    server: RunningServer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def vault(self) -> VaultService:
        return self.server.vault

    @property
    def storage(self) -> Storage:
        return self.server.vault.storage

    @staticmethod
    def auth(caller: str) -> tuple[tuple[str, str], ...]:
        """gRPC metadata that authenticates as ``caller``."""
        return (("authorization", f"Bearer {TOKENS[caller]}"),)


def start_callers_server(database_url: str, kms: KeyManager) -> CallersServer:
    engine = make_engine(database_url)
    migrate(engine)
    vault = vault_service(Storage(engine), kms)
    auth = Authenticator({token_hash(t): c for c, t in TOKENS.items()}), POLICY
    server = start_server(ServerConfig(listen="127.0.0.1:0"), vault=vault, auth=auth)
    return CallersServer(server)
