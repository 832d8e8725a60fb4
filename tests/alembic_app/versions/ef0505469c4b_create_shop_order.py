"""create shop_order

Revision ID: ef0505469c4b
Revises:
Create Date: 2025-11-22

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ef0505469c4b"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shop_order",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(100), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("app_ck_shop_order_quantity_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("app_pk_shop_order")),
    )
    op.create_index(op.f("app_ix_shop_order_customer"), "shop_order", ["customer"])


def downgrade() -> None:
    op.drop_index(op.f("app_ix_shop_order_customer"), table_name="shop_order")
    op.drop_table("shop_order")
