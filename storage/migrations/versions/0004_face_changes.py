"""collections' change log (face_change)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "facechange",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("company_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("collection_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("face_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("op", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_facechange_collection_seq", "facechange", ["collection_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_facechange_collection_seq", table_name="facechange")
    op.drop_table("facechange")
