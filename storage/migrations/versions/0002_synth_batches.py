"""synth_batches: every paid request of a synthesis job, so an interrupted job resumes for free

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 06:40:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "synth_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("job_key", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("batch_index", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("response_format", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("raw_reply", sa.Text(), nullable=True),
        sa.Column("samples", sa.JSON(), nullable=True),
        sa.Column("invalid", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_synth_batches_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_synth_batches")),
        sa.UniqueConstraint("job_key", "batch_index", name=op.f("uq_synth_batches_job_key_batch_index")),
    )
    op.create_index(op.f("ix_synth_batches_project_id"), "synth_batches", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_synth_batches_project_id"), table_name="synth_batches")
    op.drop_table("synth_batches")
