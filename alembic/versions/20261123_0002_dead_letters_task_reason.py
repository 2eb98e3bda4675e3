"""dead_letters: index on (task_name, reason)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 01:20:00

The dead-letter gauge groups by (task_name, reason) at every scrape, and
listings filter by task_name; without this index both read the whole table.
Built CONCURRENTLY, so workers keep writing dead letters while it builds.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_dead_letters_task_name_reason"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            INDEX,
            "dead_letters",
            ["task_name", "reason"],
            unique=False,
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            INDEX, table_name="dead_letters", postgresql_concurrently=True, if_exists=True
        )
