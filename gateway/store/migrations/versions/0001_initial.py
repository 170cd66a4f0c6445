"""Initial schema: inbox, interactions, partners, quarantine, audit, leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 21:29:37.545836
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_subject", "audit_events", ["subject"], unique=False)

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "partners",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partners")),
    )
    op.create_table(
        "raw_messages",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=1000), nullable=True),
        sa.Column("transport", sa.JSON(), nullable=False),
        sa.Column("sender", sa.JSON(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "received",
                "processing",
                "stored",
                "quarantined",
                "duplicate",
                name="raw_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duplicate_of", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["duplicate_of"], ["raw_messages.id"], name=op.f("fk_raw_messages_duplicate_of_raw_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_messages")),
    )
    op.create_index("ix_raw_messages_sha256", "raw_messages", ["sha256"], unique=False)
    op.create_index(
        "ix_raw_messages_state_received_at", "raw_messages", ["state", "received_at"], unique=False
    )

    op.create_table(
        "interactions",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("dedup_key", sa.String(length=1000), nullable=False),
        sa.Column("raw_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=200), nullable=True),
        sa.Column("partner_name", sa.String(length=500), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("raw_sha256", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.JSON(), nullable=False),
        sa.Column("doc_standard", sa.String(length=64), nullable=True),
        sa.Column("doc_type", sa.String(length=64), nullable=True),
        sa.Column("doc_version", sa.String(length=64), nullable=True),
        sa.Column("doc_control_number", sa.String(length=200), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("references", sa.JSON(), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("total_amount", sa.String(length=64), nullable=True),
        sa.Column("mapping_file", sa.String(length=1000), nullable=True),
        sa.Column("mapping_sha256", sa.String(length=64), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.id"], name=op.f("fk_interactions_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["raw_id"], ["raw_messages.id"], name=op.f("fk_interactions_raw_id_raw_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interactions")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_interactions_dedup_key")),
    )
    op.create_index(
        "ix_interactions_partner_id_received_at", "interactions", ["partner_id", "received_at"], unique=False
    )
    op.create_index("ix_interactions_raw_id", "interactions", ["raw_id"], unique=False)
    op.create_index("ix_interactions_received_at", "interactions", ["received_at"], unique=False)

    op.create_table(
        "partner_identities",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("partner_id", sa.String(length=200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.id"],
            name=op.f("fk_partner_identities_partner_id_partners"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_partner_identities")),
        sa.UniqueConstraint(
            "partner_id", "kind", "value", name=op.f("uq_partner_identities_partner_id_kind_value")
        ),
    )
    op.create_index("ix_partner_identities_kind_value", "partner_identities", ["kind", "value"], unique=False)

    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("raw_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replays", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["raw_id"], ["raw_messages.id"], name=op.f("fk_quarantine_raw_id_raw_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
    )
    op.create_index(
        "uq_quarantine_open_raw_id",
        "quarantine",
        ["raw_id"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )

    op.create_table(
        "attachments",
        sa.Column("interaction_id", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("filename", sa.String(length=1000), nullable=True),
        sa.Column("media_type", sa.String(length=200), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_attachments_interaction_id_interactions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("interaction_id", "position", name=op.f("pk_attachments")),
    )
    op.create_index("ix_attachments_sha256", "attachments", ["sha256"], unique=False)

    op.create_table(
        "interaction_lines",
        sa.Column("interaction_id", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("line_number", sa.String(length=64), nullable=True),
        sa.Column("product_id", sa.String(length=200), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("quantity", sa.String(length=64), nullable=True),
        sa.Column("unit", sa.String(length=32), nullable=True),
        sa.Column("unit_price", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_interaction_lines_interaction_id_interactions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("interaction_id", "position", name=op.f("pk_interaction_lines")),
    )
    op.create_table(
        "interaction_parties",
        sa.Column("interaction_id", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=True),
        sa.Column("party_id", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["interaction_id"],
            ["interactions.id"],
            name=op.f("fk_interaction_parties_interaction_id_interactions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("interaction_id", "position", name=op.f("pk_interaction_parties")),
    )


def downgrade() -> None:
    op.drop_table("interaction_parties")
    op.drop_table("interaction_lines")
    op.drop_index("ix_attachments_sha256", table_name="attachments")

    op.drop_table("attachments")
    op.drop_index(
        "uq_quarantine_open_raw_id",
        table_name="quarantine",
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )

    op.drop_table("quarantine")
    op.drop_index("ix_partner_identities_kind_value", table_name="partner_identities")

    op.drop_table("partner_identities")
    op.drop_index("ix_interactions_received_at", table_name="interactions")
    op.drop_index("ix_interactions_raw_id", table_name="interactions")
    op.drop_index("ix_interactions_partner_id_received_at", table_name="interactions")

    op.drop_table("interactions")
    op.drop_index("ix_raw_messages_state_received_at", table_name="raw_messages")
    op.drop_index("ix_raw_messages_sha256", table_name="raw_messages")

    op.drop_table("raw_messages")
    op.drop_table("partners")
    op.drop_table("leases")
    op.drop_index("ix_audit_events_subject", table_name="audit_events")

    op.drop_table("audit_events")
