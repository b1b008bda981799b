"""conversations: where a run lives in a chat (channel, thread, card, the messages holding buttons);
chat_actions.asks: the prompt for text a button's action needs first (a Fix's answer, an override's reason)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 14:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("platform", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("thread", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("card", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("buttons", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_conversations_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint("platform", "run_id", name=op.f("uq_conversations_platform_run_id")),
    )
    op.create_index(op.f("ix_conversations_run_id"), "conversations", ["run_id"], unique=False)
    with op.batch_alter_table("chat_actions") as batch:
        batch.add_column(sa.Column("asks", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chat_actions") as batch:
        batch.drop_column("asks")
    op.drop_index(op.f("ix_conversations_run_id"), table_name="conversations")
    op.drop_table("conversations")
