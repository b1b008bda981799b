"""deployments: indexes on the stable and version names, which the gateway resolves on every request

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 10:00:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_deployments_model_name"), "deployments", ["model_name"], unique=False)
    op.create_index(op.f("ix_deployments_version_name"), "deployments", ["version_name"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_deployments_version_name"), table_name="deployments")
    op.drop_index(op.f("ix_deployments_model_name"), table_name="deployments")
