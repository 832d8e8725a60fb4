"""A FastAPI app on AsyncSession that starts job chains from an endpoint and shows their status.

    pip install 'queuert_sa[asyncio,dashboard]' fastapi uvicorn
    python examples/fastapi_app.py --serve      # http://127.0.0.1:8000 (uvicorn)
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"item": "book", "quantity": 2}'
    curl localhost:8000/chains/<chain id>
    open http://127.0.0.1:8000/queuert/         # the dashboard: user "ops", password
                                                # $DASHBOARD_PASSWORD (default "ops")

    python examples/fastapi_app.py              # a self-contained demo run, then exit

POST /orders inserts an order and starts a "reserve-stock" chain in ONE
transaction (an invalid quantity rolls back both). The asyncio worker runs in
the app's lifespan: "reserve-stock" is atomic (its write to the order commits
with the job's completion) and continues with "charge-card", a staged handler
that calls a (pretend) payment provider with no transaction open. The
queuert dashboard is mounted at /queuert, behind HTTP Basic auth, with its
writes (trigger, retry, cancel, delete) allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hmac
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.requests import Request
from starlette.responses import Response

import queuert_sa as q
from queuert_sa.dashboard import Dashboard


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int]
    state: Mapped[str] = mapped_column(String(20), default="new")
    payment_id: Mapped[str | None] = mapped_column(String(64), default=None)


class OrderIn(TypedDict):
    order_id: int


class Charged(TypedDict):
    payment_id: str


job_types = q.JobTypes()
reserve = job_types.entry(
    "reserve-stock", input=OrderIn, output=Charged, continues_with=["charge-card"]
)
charge = job_types.define("charge-card", input=OrderIn, output=Charged)

DATABASE_URL = os.environ.get("QUEUERT_DATABASE_URL", "sqlite+aiosqlite:///fastapi_example.db")
engine = create_async_engine(DATABASE_URL)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)
queuert = q.AsyncQueuert(engine, job_types)
worker = queuert.worker(
    concurrency=4, poll_interval=dt.timedelta(seconds=5), handle_signals="never"
)


@worker.handler(reserve)
async def reserve_stock(attempt: q.AsyncAttempt[OrderIn, Charged]) -> q.Outcome:
    order = await attempt.session.get_one(Order, attempt.input["order_id"])
    order.state = "reserved"  # commits together with this job's completion
    return attempt.continue_with(charge, {"order_id": order.id})


async def payment_provider_charge(order_id: int) -> str:
    await asyncio.sleep(0.05)  # a slow call to another system; no transaction is open
    return f"pay-{order_id}-{uuid.uuid4().hex[:8]}"


@worker.handler(charge, mode="staged", lease=dt.timedelta(seconds=30))
async def charge_card(attempt: q.AsyncAttempt[OrderIn, Charged]) -> q.Outcome:
    async with attempt.prepare() as session:
        order = await session.get_one(Order, attempt.input["order_id"])
        order_id = order.id
    payment_id = await payment_provider_charge(order_id)
    async with attempt.transaction() as session:
        order = await session.get_one(Order, order_id)
        order.state, order.payment_id = "paid", payment_id
        return attempt.complete({"payment_id": payment_id})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(q.metadata.create_all)  # production: the Alembic branch
    await worker.start()
    try:
        yield
    finally:
        await worker.stop()


app = FastAPI(lifespan=lifespan)
DASHBOARD_PASSWORD = os.environ.get("DASHBOARD_PASSWORD", "ops")


def operators_only(request: Request) -> bool | Response:
    """HTTP Basic auth as "ops"; a real app asks its own login (session, SSO) here."""
    expected = base64.b64encode(f"ops:{DASHBOARD_PASSWORD}".encode()).decode()
    if hmac.compare_digest(request.headers.get("authorization", ""), f"Basic {expected}"):
        return True
    return Response(status_code=401, headers={"WWW-Authenticate": 'Basic realm="queuert"'})


app.mount("/queuert", Dashboard(queuert, authorize=operators_only, read_only=False))


async def session_dep() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as session:
        yield session


class OrderRequest(BaseModel):
    item: str
    quantity: int


@app.post("/orders", status_code=201)
async def create_order(
    body: OrderRequest, session: Annotated[AsyncSession, Depends(session_dep)]
) -> dict[str, Any]:
    async with session.begin():
        order = Order(item=body.item, quantity=body.quantity)
        session.add(order)
        await session.flush()
        chain = await queuert.start_chain(session, reserve, {"order_id": order.id})
        if body.quantity < 1:
            # Raising rolls back the order AND the chain: no job without its order.
            raise HTTPException(422, "quantity must be at least 1")
    return {"order_id": order.id, "chain_id": str(chain.id)}


@app.get("/chains/{chain_id}")
async def chain_status(chain_id: uuid.UUID) -> dict[str, Any]:
    try:
        chain = await queuert.get_chain(chain_id)
    except q.ChainNotFoundError:
        raise HTTPException(404, f"no chain {chain_id}") from None
    steps = await queuert.list_chain_jobs(chain_id)
    return {
        "id": str(chain.id),
        "status": chain.status.value,
        "current": chain.current_type_name,
        "output": chain.output,
        "steps": [
            {"type": j.type_name, "status": j.status.value, "attempt": j.attempt} for j in steps
        ],
    }


async def demo() -> None:
    """Drive the app in-process (no server): two orders, one refused, then their statuses."""
    import httpx

    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            created = (await client.post("/orders", json={"item": "book", "quantity": 2})).json()
            print("created:", created)
            refused = await client.post("/orders", json={"item": "pen", "quantity": 0})
            print("refused:", refused.status_code, refused.json()["detail"])
            chain = await queuert.await_chain(created["chain_id"], timeout=dt.timedelta(seconds=10))
            print("chain completed:", chain.output is not None)
            status = (await client.get(f"/chains/{created['chain_id']}")).json()
            print("status:", status["status"], [(s["type"], s["status"]) for s in status["steps"]])
            seen = await client.get("/queuert/api/chains", auth=("ops", DASHBOARD_PASSWORD))
            anonymous = await client.get("/queuert/")
            print(
                f"dashboard: {len(seen.json()['items'])} chain(s); anonymous: {anonymous.status_code}"
            )
            async with SessionLocal() as session:
                order = await session.get_one(Order, created["order_id"])
                print("order:", order.state, order.payment_id is not None)
                orders = (await session.execute(Order.__table__.select())).all()
                print("orders in the database:", len(orders))
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help="serve with uvicorn on :8000")
    if parser.parse_args().serve:
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=8000)
    else:
        asyncio.run(demo())
