"""The framework's floor: Litestar on uvicorn (uvloop + httptools), as `loyalty serve` runs it,
with one route per request the generator sends — a msgspec body decoded, a path parameter, a
fixed 201 answer; no middleware, no database. Measures what HTTP + Litestar alone cost a
request on this machine (docs/benchmarks.md).
Usage: .venv/bin/python scripts/bench/bare_litestar.py 8097
       .venv/bin/loyalty bench --url http://127.0.0.1:8097 --admin-key x --mix earn=1 -c 64 -T 15 --warmup 3
"""

import sys
import uuid

import msgspec
import uvicorn
from litestar import Litestar, post

MEMBER = uuid.UUID("00000000-0000-0000-0000-000000000001")


class Earn(msgspec.Struct, forbid_unknown_fields=True):
    order_ref: str
    amount: str
    currency: str


class Created(msgspec.Struct):
    key: str = "k"
    member_id: uuid.UUID = MEMBER
    position: int = 1


@post("/v1/members/{member_id:uuid}/earn", status_code=201)
async def earn(member_id: uuid.UUID, data: Earn) -> Created:
    return Created(member_id=member_id)


@post(["/v1/channels", "/v1/api-keys", "/v1/members"], status_code=201)
async def setup(data: dict[str, object]) -> Created:
    return Created()


app = Litestar([earn, setup], logging_config=None)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )
