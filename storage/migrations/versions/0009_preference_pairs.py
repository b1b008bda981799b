"""preference_pairs: reviewers' fixes of judged samples as (prompt, chosen, rejected) pairs for DPO

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 17:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "preference_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("judgement_id", sa.Integer(), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("chosen", sa.Text(), nullable=False),
        sa.Column("rejected", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["judgement_id"], ["judgements.id"], name=op.f("fk_preference_pairs_judgement_id_judgements")
        ),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_preference_pairs_project_id_projects")),
        sa.ForeignKeyConstraint(["review_id"], ["reviews.id"], name=op.f("fk_preference_pairs_review_id_reviews")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_preference_pairs_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preference_pairs")),
        sa.UniqueConstraint("review_id", name=op.f("uq_preference_pairs_review_id")),
    )
    op.create_index(op.f("ix_preference_pairs_judgement_id"), "preference_pairs", ["judgement_id"], unique=False)
    op.create_index(op.f("ix_preference_pairs_project_id"), "preference_pairs", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_preference_pairs_project_id"), table_name="preference_pairs")
    op.drop_index(op.f("ix_preference_pairs_judgement_id"), table_name="preference_pairs")
    op.drop_table("preference_pairs")
