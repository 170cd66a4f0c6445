"""AS2 message ledger: Message-ID + partner -> raw message, MDN, disposition, MIC.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 22:00:00

Written by hand from ``gateway.as2.ledger.As2MessageRow``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "as2_messages",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("partner_id", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=1000), nullable=False),
        sa.Column("as2_from", sa.String(length=200), nullable=False),
        sa.Column("as2_to", sa.String(length=200), nullable=False),
        sa.Column("raw_id", sa.String(length=64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=64), nullable=False),
        sa.Column("disposition", sa.String(length=500), nullable=False),
        sa.Column("mic", sa.String(length=200), nullable=True),
        sa.Column("mic_alg", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("mdn_headers", sa.Text(), nullable=True),
        sa.Column("mdn_body", sa.LargeBinary(), nullable=True),
        sa.Column("mdn_message_id", sa.String(length=1000), nullable=True),
        sa.Column("async_url", sa.String(length=2000), nullable=True),
        sa.Column("async_state", sa.String(length=16), nullable=True),
        sa.Column("async_attempts", sa.Integer(), nullable=False),
        sa.Column("async_next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("async_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_as2_messages")),
        sa.UniqueConstraint(
            "direction",
            "partner_id",
            "message_id",
            name=op.f("uq_as2_messages_direction_partner_id_message_id"),
        ),
    )
    op.create_index("ix_as2_messages_raw_id", "as2_messages", ["raw_id"], unique=False)
    op.create_index("ix_as2_messages_async_state", "as2_messages", ["async_state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_as2_messages_async_state", table_name="as2_messages")
    op.drop_index("ix_as2_messages_raw_id", table_name="as2_messages")
    op.drop_table("as2_messages")
