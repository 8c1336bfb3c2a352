"""API keys with scopes, optionally limited to a prefix of context keys.

A key looks like `psp_<id>_<secret>`. Keys come from two places: `PSP_API_KEYS` (fixed for the
life of the process) and the registry database (`psp keys create`, revocable at run time, and
reread every `PSP_REGISTRY_POLL_SECONDS`). Both hold, per key, the id, a random salt and
`sha256(salt + secret)`, never the key itself. A fast salted hash is enough here because the
secrets are 256-bit random tokens, not passwords: there is nothing to brute-force, and the
check stays cheap on the predict path.

Authentication is on when `PSP_AUTH__REQUIRED` says so, when `PSP_API_KEYS` holds a key, or
once any key has been stored in the registry, revoked ones included: revoking the last key
locks every caller out instead of opening the API. Only a registry in which no key was ever
created, without the switch and without `PSP_API_KEYS`, leaves the service open.

Neither a key nor its secret is ever logged; messages name keys by their id at most.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

Scope = Literal["predict", "train", "admin"]
ALL_SCOPES: frozenset[Scope] = frozenset({"predict", "train", "admin"})


class ApiKeySpec(BaseModel):
    """One configured key, as it appears in `PSP_API_KEYS` (a JSON list of these)."""

    id: str = Field(pattern=r"^[a-f0-9]{8,32}$")
    salt: str = Field(pattern=r"^[a-f0-9]{32}$")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    scopes: list[Scope] = Field(min_length=1)
    key_prefix: str = ""  # the key may only touch contexts whose keys start with this
    name: str = ""  # for people reading the settings; never a secret


class AuthSettings(BaseModel):
    """`PSP_AUTH__*`: whether the API requires keys even before any exists."""

    # On: every request but health, readiness and metrics needs a valid key, from the start.
    # Off: keys are required as soon as PSP_API_KEYS holds one or one was ever stored.
    required: bool = False


class Unauthorized(Exception):
    """No key, or not a valid one."""


class Forbidden(Exception):
    """A valid key without the scope, or for a context outside its prefix."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the scopes and the context-key prefix of their key."""

    name: str
    scopes: frozenset[Scope]
    key_prefix: str = ""
    key_id: str = ""  # the public id of the presented key; empty for the open service

    def require(self, scope: Scope | None, context_keys: Iterable[str] = ()) -> None:
        """Raises Forbidden unless the principal has `scope` (None: any scope, for reading)
        and owns every context key."""
        if scope is not None and scope not in self.scopes:
            raise Forbidden(
                f"this API key lacks the {scope!r} scope (it has {sorted(self.scopes)}); "
                f"use a key with the {scope!r} scope"
            )
        for key in context_keys:
            if not key.startswith(self.key_prefix):
                raise Forbidden(
                    f"this API key may only use contexts whose keys start with "
                    f"{self.key_prefix!r}; {key!r} does not"
                )

    def require_whole_model(
        self, scope: Scope, reach: str = "changes the model of every context"
    ) -> None:
        """Raises Forbidden unless the principal has `scope` for every context: operations
        without a context key (a rollback, the dead letters of a shard's queue) reach every
        tenant's, as `reach` says."""
        self.require(scope)
        if self.key_prefix:
            raise Forbidden(
                f"this API key may only use contexts whose keys start with {self.key_prefix!r}, "
                f"and this operation {reach}; use an admin key without a key prefix"
            )

    def listing_prefix(self, requested: str) -> str:
        """The key prefix to list contexts with: `requested`, narrowed to the principal's own.

        Raises:
            Forbidden: `requested` names contexts outside the principal's prefix.
        """
        if requested.startswith(self.key_prefix):
            return requested
        if self.key_prefix.startswith(requested):
            return self.key_prefix
        raise Forbidden(
            f"this API key may only list contexts whose keys start with {self.key_prefix!r}; "
            f"send a prefix that starts with {self.key_prefix!r}, or none"
        )


OPEN = Principal(name="open", scopes=ALL_SCOPES)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class Authenticator:
    """Checks presented keys against the configured specs and the stored ones."""

    def __init__(self, specs: Iterable[ApiKeySpec], *, required: bool = False) -> None:
        self._configured = {spec.id: spec for spec in specs}
        self._by_id = dict(self._configured)
        self._required = required or bool(self._configured)

    @property
    def enabled(self) -> bool:
        """Whether callers need a key; once true it stays true for the life of the process."""
        return self._required

    def use_stored(self, specs: Iterable[ApiKeySpec], *, ever_created: bool) -> None:
        """Replaces the keys read from the registry (the valid, unrevoked ones); a revoked key
        stops working here from this call on. `PSP_API_KEYS` entries always stay.

        Args:
            specs: The valid stored keys.
            ever_created: Whether the registry holds any key, revoked ones included; from
                then on authentication stays on, even with no valid key left.
        """
        self._by_id = {spec.id: spec for spec in specs} | self._configured
        self._required = self._required or ever_created or bool(self._by_id)

    def authenticate(self, presented: str | None) -> Principal:
        """The principal of a presented key; everyone is `OPEN` while authentication is off.

        Raises:
            Unauthorized: Authentication is on and no key, or a wrong one, was presented.
        """
        if not self.enabled:
            return OPEN
        if not presented:
            raise Unauthorized(
                "this service requires an API key; send it as 'Authorization: Bearer <key>' "
                "or 'X-API-Key: <key>'"
            )
        _, _, rest = presented.partition("psp_")
        key_id, _, secret = rest.partition("_")
        spec = self._by_id.get(key_id)
        if spec is None or not hmac.compare_digest(_digest(spec.salt, secret), spec.sha256):
            raise Unauthorized("the API key is not valid; send a key issued for this service")
        return Principal(
            name=spec.name or spec.id,
            scopes=frozenset(spec.scopes),
            key_prefix=spec.key_prefix,
            key_id=spec.id,
        )


def issue_key(
    scopes: Iterable[Scope], key_prefix: str = "", name: str = ""
) -> tuple[str, ApiKeySpec]:
    """A new random key and its spec, for `PSP_API_KEYS` or the registry (the key is shown
    only once)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    spec = ApiKeySpec(
        id=key_id,
        salt=salt,
        sha256=_digest(salt, secret),
        scopes=sorted(set(scopes)),
        key_prefix=key_prefix,
        name=name,
    )
    return f"psp_{key_id}_{secret}", spec
