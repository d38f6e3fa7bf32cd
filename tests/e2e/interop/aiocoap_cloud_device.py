"""aiocoap as an independent device of ocf-dev-cloud: sign-up, sign-in and RD publish on one
coaps+tcp connection with a client certificate (OCF-PROTOCOL.md §5.1, §5.2, §5.5).

Usage: aiocoap_cloud_device.py COAPS_TCP_BASE CERT KEY CA DI AUTH_CODE

aiocoap's TLS client only takes a CA file from its credentials, so the SSL context is built here
with the client certificate as well. Prints one JSON document with what it saw; the Rust test
decides what is right.
"""

import asyncio
import json
import ssl
import sys

import cbor2
from aiocoap import Context, Message, POST
from aiocoap.numbers.contentformat import ContentFormat
import aiocoap.transports.tls as tls

OCF_CBOR = 10000


def install_tls_context(cert, key, ca):
    def factory(self, hostinfo):
        c = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        c.load_cert_chain(cert, key)
        return c

    tls.TLSClient._ssl_context_factory = factory


async def post(ctx, uri, body):
    req = Message(code=POST, uri=uri, payload=cbor2.dumps(body))
    req.opt.content_format = ContentFormat(OCF_CBOR)
    req.opt.accept = ContentFormat(OCF_CBOR)
    r = await asyncio.wait_for(ctx.request(req).response, 10)
    try:
        rep = cbor2.loads(r.payload) if r.payload else None
    except Exception:  # noqa: BLE001 - report, do not crash
        rep = r.payload.decode(errors="replace")
    return str(r.code), rep


async def main(base, cert, key, ca, di, code):
    install_tls_context(cert, key, ca)
    ctx = await Context.create_client_context()
    out = {}
    try:
        out["signup_code"], up = await post(
            ctx,
            base + "/oic/sec/account",
            {"di": di, "accesstoken": code, "authprovider": "plgd", "devicetype": "device"},
        )
        out["signin_code"], signin = await post(
            ctx,
            base + "/oic/sec/session",
            {"di": di, "uid": up["uid"], "accesstoken": up["accesstoken"], "login": True},
        )
        out["expiresin"] = signin.get("expiresin") if isinstance(signin, dict) else None
        link = {
            "href": "/light/1",
            "rt": ["core.light"],
            "if": ["oic.if.rw", "oic.if.baseline"],
            "p": {"bm": 3},
        }
        out["publish_code"], published = await post(
            ctx, base + "/oic/rd?rt=oic.wk.rdpub", {"di": di, "n": "aiocoap", "ttl": 0, "links": [link]}
        )
        out["published"] = published
    except Exception as e:  # noqa: BLE001 - report, do not crash
        out["error"] = repr(e)
    finally:
        await ctx.shutdown()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
