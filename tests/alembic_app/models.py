"""The sample application's own models, on its own MetaData (not queuert's)."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deliberately unlike queuert's naming convention: Alembic applies the target
# metadata's convention to every ``op`` call, queuert's revisions included.
NAMING_CONVENTION = {
    "ix": "app_ix_%(table_name)s_%(column_0_name)s",
    "uq": "app_uq_%(table_name)s_%(column_0_name)s",
    "ck": "app_ck_%(table_name)s_%(constraint_name)s",
    "fk": "app_fk_%(table_name)s_%(column_0_name)s",
    "pk": "app_pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ShopOrder(Base):
    __tablename__ = "shop_order"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
