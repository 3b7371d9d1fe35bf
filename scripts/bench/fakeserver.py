"""A trivial HTTP/1.1 keep-alive server (uvloop + httptools) answering every request 201 with a
fixed body: measures what the load generator itself can push (docs/benchmarks.md).
Usage: .venv/bin/python scripts/bench/fakeserver.py 8097
       .venv/bin/loyalty bench --url http://127.0.0.1:8097 --admin-key x --members 10 -T 8 --warmup 2 -j 1
"""

import asyncio
import sys

import httptools
import uvloop

BODY = b'{"key":"k","member_id":"00000000-0000-0000-0000-000000000001","position":1}'
HEAD = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY)
RESP = HEAD + BODY


class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_complete(self):
        self.transport.write(RESP)


async def main():
    srv = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await srv.serve_forever()


uvloop.run(main())
