"""Who may call the API: clients, with their status and limits, and their API keys; and the
window in which a rate-limited client's requests are counted.

A client's `name` is what `tasks.client` and the webhook tables hold. Its limits are stored
and validated here; null means "no limit". A key is kept only as the SHA-256 digest of the
key (see docs/decisions.md); the key itself is shown once, when it is made.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.task import Word, _one_of
from app.vocabulary import BudgetPeriod, ClientStatus


class Client(Base):
    """A service that calls edithook, and what it may spend."""

    __tablename__ = "clients"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[ClientStatus] = mapped_column(
        Word(ClientStatus), default=ClientStatus.ACTIVE, server_default=text("'active'")
    )
    budget_images: Mapped[int | None] = mapped_column(Integer)
    budget_period: Mapped[BudgetPeriod | None] = mapped_column(Word(BudgetPeriod))
    budget_soft_ratio: Mapped[float | None] = mapped_column(Float)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )

    __table_args__ = (
        CheckConstraint(_one_of("status", ClientStatus), name="status"),
        CheckConstraint(
            f"budget_period IS NULL OR {_one_of('budget_period', BudgetPeriod)}",
            name="budget_period",
        ),
        CheckConstraint("budget_images IS NULL OR budget_images >= 0", name="budget_images"),
        CheckConstraint(
            "budget_soft_ratio IS NULL OR (budget_soft_ratio > 0 AND budget_soft_ratio <= 1)",
            name="budget_soft_ratio",
        ),
        CheckConstraint(
            "requests_per_minute IS NULL OR requests_per_minute >= 1", name="requests_per_minute"
        ),
        CheckConstraint("max_in_flight IS NULL OR max_in_flight >= 1", name="max_in_flight"),
    )


class ApiKey(Base):
    """One of a client's keys: its digest, and when it was made, revoked and last used."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    client: Mapped[str] = mapped_column(
        Text, ForeignKey("clients.name", ondelete="CASCADE", onupdate="CASCADE")
    )
    # SHA-256 of the key's UTF-8 bytes; unique, so one key never names two clients.
    hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Written at most about once a minute per key, in batches (app.clients.keys).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_api_keys_client", "client", "created_at"),
        CheckConstraint("octet_length(hash) = 32", name="hash"),
    )


class ClientSpend(Base):
    """What a client with a budget has spent in one budget period (a UTC day or month).

    `reserved` holds the `n` of its tasks not yet ended, `charged` the images the ended ones
    cost. A create adds its `n` to `reserved` under this row's lock, and only while
    `charged + reserved` stays within the budget (`app.budgets.spend`); the move into a
    terminal status moves it from `reserved` to `charged` (what the provider charged) in the
    writer's statement. Clients without a budget have no rows: their usage is read from the
    tasks.
    """

    __tablename__ = "client_spend"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    client: Mapped[str] = mapped_column(
        Text, ForeignKey("clients.name", ondelete="CASCADE", onupdate="CASCADE")
    )
    period: Mapped[BudgetPeriod] = mapped_column(Word(BudgetPeriod))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reserved: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    charged: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the soft threshold was crossed in this period and its message made; None: not yet.
    threshold_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )

    __table_args__ = (
        UniqueConstraint("client", "period", "period_start"),
        CheckConstraint(_one_of("period", BudgetPeriod), name="period"),
        CheckConstraint("reserved >= 0", name="reserved"),
        CheckConstraint("charged >= 0", name="charged"),
    )


class RateLimitWindow(Base):
    """A rate-limited client's current window: when it began and the requests counted in it
    (written only by `app.clients.ratelimit.COUNT`).

    UNLOGGED: a counter written on every request of a limited client needs no WAL, and
    after a crash of Postgres it comes back empty, which only gives every client a fresh
    window. No foreign key: a window outlives nothing worth keeping.
    """

    __tablename__ = "rate_limit_windows"

    client: Mapped[str] = mapped_column(Text, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("used >= 1", name="used"),
        {"prefixes": ["UNLOGGED"]},
    )
