"""Hot-path index: the duplicate-bytes lookup of every processed message.

``first_raw_with_sha`` asks for ``sha256 = ? AND state = 'stored' AND id <> ?`` ordered
by ``(received_at, id)``. With the single-column sha256 index SQLite's planner (no
ANALYZE statistics) preferred ``ix_raw_messages_state_received_at`` and walked every
stored message: a cost that grew with the inbox. ``(sha256, state, received_at, id)``
answers it with one index seek and no sort; it also covers every use of the
single-column index, which is dropped (one index less to maintain per add_raw).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_raw_messages_sha256_state_received_at",
        "raw_messages",
        ["sha256", "state", "received_at", "id"],
        unique=False,
    )
    op.drop_index("ix_raw_messages_sha256", table_name="raw_messages")


def downgrade() -> None:
    op.create_index("ix_raw_messages_sha256", "raw_messages", ["sha256"], unique=False)
    op.drop_index("ix_raw_messages_sha256_state_received_at", table_name="raw_messages")
