"""aiocoap as an independent CoAP client of ocf-agent, over UDP and TCP (RFC 8323).

Usage: aiocoap_client.py BASE_URI   (coap://host:port or coap+tcp://host:port)

Prints one JSON document with what it saw; the Rust test decides what is right.
"""

import asyncio
import json
import sys

import cbor2
from aiocoap import Context, Message, GET, POST
from aiocoap.numbers.contentformat import ContentFormat

OCF_CBOR = 10000


def decode(msg):
    cf = msg.opt.content_format
    cf = int(cf) if cf is not None else None
    if cf in (OCF_CBOR, 60):
        return cbor2.loads(msg.payload)
    if cf == 50:
        return json.loads(msg.payload.decode())
    return msg.payload.decode(errors="replace")


async def main(base):
    ctx = await Context.create_client_context()
    out = {}
    try:
        # As an OCF client would: Accept 10000. The answer then carries the OCF option 2053.
        req = Message(code=GET, uri=base + "/oic/res")
        req.opt.accept = ContentFormat(OCF_CBOR)
        r = await asyncio.wait_for(ctx.request(req).response, 10)
        out["res_code"] = str(r.code)
        out["res_cf"] = int(r.opt.content_format) if r.opt.content_format is not None else None
        out["hrefs"] = [link["href"] for link in decode(r)]

        body = cbor2.dumps({"value": True})
        req = Message(code=POST, uri=base + "/switch", payload=body)
        req.opt.content_format = ContentFormat(OCF_CBOR)
        r = await asyncio.wait_for(ctx.request(req).response, 10)
        out["post_code"] = str(r.code)

        req = Message(code=GET, uri=base + "/switch")
        req.opt.accept = ContentFormat(50)
        r = await asyncio.wait_for(ctx.request(req).response, 10)
        out["switch_json"] = decode(r)

        req = Message(code=GET, uri=base + "/temperature", observe=0)
        pr = ctx.request(req)
        first = await asyncio.wait_for(pr.response, 10)
        seqs = [first.opt.observe]
        temps = [decode(first)["temperature"]]
        obs = pr.observation
        async for n in obs:
            seqs.append(n.opt.observe)
            temps.append(decode(n)["temperature"])
            if len(seqs) >= 3:
                obs.cancel()
                break
        out["observe_seqs"] = seqs
        out["temperatures"] = temps
    finally:
        await ctx.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
