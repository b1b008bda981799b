"""runs.iteration nullable: a run refused at its start (its data or template, found on the worker) has no iteration

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 20:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("iteration", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    # Refused runs need a number again: one no counted run has (ids are unique, iterations positive).
    op.execute("UPDATE runs SET iteration = -id WHERE iteration IS NULL")
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("iteration", existing_type=sa.Integer(), nullable=False)
