"""An IPv6 client as OCF clients behave: discover by multicast, take the first IPv6 endpoint the
answer lists, and read and observe /temperature through it.

Usage: aiocoap_first_endpoint.py INTERFACE

The discovery request is built and parsed with aiocoap's message codec and sent from a plain
socket (aiocoap's client context returns no answers to a multicast request). The endpoint is
used with the zone of the interface the answer came in on, as iotivity-lite's client does.
Prints one JSON document; the Rust test decides what is right.
"""

import asyncio
import json
import warnings
import socket
import sys

import cbor2
from aiocoap import Context, Message, GET, NON
from aiocoap.numbers.contentformat import ContentFormat

OCF_CBOR = 10000


def discover(interface):
    # aiocoap deprecates setting the type, ID and token by hand; here the bytes are sent by us.
    warnings.simplefilter("ignore", DeprecationWarning)
    index = socket.if_nametoindex(interface)
    # Filtered by resource type, as iotivity-lite's oc_do_ip_discovery asks: one link, one
    # datagram.
    request = Message(
        code=GET,
        mtype=NON,
        mid=0x4F43,
        token=b"eps1",
        uri_path=("oic", "res"),
        uri_query=("rt=oic.r.temperature",),
    )
    request.opt.accept = ContentFormat(OCF_CBOR)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.settimeout(5)
        s.sendto(request.encode(), ("ff02::158", 5683, 0, index))
        data, peer = s.recvfrom(4096)
    answer = Message.decode(data)
    return peer[0], cbor2.loads(answer.payload)


async def main(interface):
    out = {}
    peer, links = discover(interface)
    out["answered_from"] = peer
    eps = [e["ep"] for link in links if link["href"] == "/temperature" for e in link.get("eps", [])]
    out["eps"] = eps
    first = next((e for e in eps if e.startswith("coap://[")), None)
    out["first_ipv6"] = first
    if first is None:
        print(json.dumps(out))
        return
    host, port = first[len("coap://["):].split("]:")
    base = f"coap://[{host}%{interface}]:{port}"
    ctx = await Context.create_client_context()
    try:
        r = await asyncio.wait_for(ctx.request(Message(code=GET, uri=base + "/temperature")).response, 10)
        out["get_code"] = str(r.code)
        out["temperature"] = cbor2.loads(r.payload).get("temperature")
        pr = ctx.request(Message(code=GET, uri=base + "/temperature", observe=0))
        first_rep = await asyncio.wait_for(pr.response, 10)
        seen = [first_rep.opt.observe]

        async def notifications():
            async for n in pr.observation:
                seen.append(n.opt.observe)
                if len(seen) >= 3:
                    return

        try:
            await asyncio.wait_for(notifications(), 20)
        except asyncio.TimeoutError:
            pass
        out["observe_sequence"] = seen
        pr.observation.cancel()
    finally:
        await ctx.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
