"""Bearer tokens with scopes. Tokens are configured as SHA-256 digests (API_TOKENS)."""

from __future__ import annotations

from dataclasses import dataclass

from celery_stack_core.config import Settings, hash_token


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


class TokenTable:
    def __init__(self, settings: Settings) -> None:
        self._by_digest = {
            t.sha256: Principal(t.name, frozenset(t.scopes)) for t in settings.api.tokens
        }

    def lookup(self, token: str) -> Principal | None:
        # A digest lookup: the stored side is never the secret, and the digest of a wrong token
        # says nothing about a right one.
        return self._by_digest.get(hash_token(token))
