"""Query functions of the stored API keys: create, list, revoke.

Only salted hashes are stored (`service.api.auth`); the key itself is shown once, when created.
Like the context queries, these functions take keyword arguments, flush and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from service.api.auth import ApiKeySpec
from service.registry.models import ApiKeyRow, utcnow


def store_api_key(*, session: Session, spec: ApiKeySpec) -> ApiKeyRow:
    """Stores a new key's spec (its hash, never the key)."""
    row = ApiKeyRow(
        id=spec.id,
        salt=spec.salt,
        sha256=spec.sha256,
        scopes=",".join(spec.scopes),
        key_prefix=spec.key_prefix,
        name=spec.name,
    )
    session.add(row)
    session.flush()
    return row


def list_api_keys(*, session: Session) -> list[ApiKeyRow]:
    """Every stored key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)))


@dataclass(frozen=True)
class StoredKeys:
    """What a serving process reads of the stored keys.

    Attributes:
        valid: The specs of the keys that are not revoked: what the service accepts.
        ever_created: Whether any key was ever stored, revoked ones included; authentication
            stays on from then on.
    """

    valid: list[ApiKeySpec]
    ever_created: bool


def stored_keys(*, session: Session) -> StoredKeys:
    """The valid stored keys, and whether any key was ever stored."""
    valid = valid_api_keys(session=session)
    ever_created = bool(valid) or bool(session.scalar(select(exists().select_from(ApiKeyRow))))
    return StoredKeys(valid, ever_created)


def valid_api_keys(*, session: Session) -> list[ApiKeySpec]:
    """The specs of the stored keys that are not revoked: what the service accepts."""
    rows = session.scalars(select(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None)))
    return [
        ApiKeySpec(
            id=row.id,
            salt=row.salt,
            sha256=row.sha256,
            scopes=row.scopes.split(","),  # type: ignore[arg-type]
            key_prefix=row.key_prefix,
            name=row.name,
        )
        for row in rows
    ]


def revoke_api_key(*, session: Session, key_id: str) -> bool:
    """Revokes a stored key; returns False when no valid stored key has that id."""
    result = session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))
