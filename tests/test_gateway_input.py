"""Bad input at the gateway: each gets a clear error, nothing crashes, the connection lives on."""
import asyncio

import aiohttp
import msgpack
import orjson
import pytest

from gateway.auth import Auth, write_secret
from syncopate.server import LocalServer, ServerSpec
from storage.memory import MemoryStore

SECRET = "gateway-input-secret-0123456789-abcdef"


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    spec = ServerSpec(data_dir=str(tmp_path_factory.mktemp("gw")), port=0, hosts=1,
                      secret_file=str(write_secret(tmp_path_factory.mktemp("key") / "secret.key", SECRET)),
                      kinds="tests.toy:kinds",
                      gateway={"max_frame_bytes": 4096, "ws_rate": 20, "ws_burst": 20,
                               "rest_rate": 5, "rest_burst": 5})
    srv = await LocalServer(spec, store=MemoryStore()).start()
    yield srv
    await srv.stop()


def token(user="alice", **kw):
    return Auth(SECRET).mint(user, **kw)


async def recv_json(ws, timeout=5.0):
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def connect(http, server, user="alice"):
    ws = await http.ws_connect(f"{server.url}/v1/ws?token={token(user)}")
    hello = await recv_json(ws)
    assert hello["type"] == "hello" and hello["payload"]["user_id"] == user
    return ws


async def test_websocket_refuses_missing_bad_and_expired_tokens(server, http):
    for url, reason in [(f"{server.url}/v1/ws", "UNAUTHORIZED"),
                        (f"{server.url}/v1/ws?token=not-a-jwt", "UNAUTHORIZED"),
                        (f"{server.url}/v1/ws?token={Auth('another-secret-of-enough-length-0123456').mint('alice')}",
                         "UNAUTHORIZED"),
                        (f"{server.url}/v1/ws?token={token(ttl_s=-10)}", "TOKEN_EXPIRED")]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await http.ws_connect(url)
        assert e.value.status == 401
        r = await http.get(url)        # the same refusal as plain HTTP carries Spotify's error shape
        body = await r.json()
        assert r.status == 401 and body["error"]["code"] == reason and body["error"]["status"] == 401


async def test_token_in_authorization_header(server, http):
    ws = await http.ws_connect(f"{server.url}/v1/ws", headers={"Authorization": f"Bearer {token('bob')}"})
    assert (await recv_json(ws))["payload"]["user_id"] == "bob"
    await ws.close()


@pytest.mark.parametrize("frame,code", [
    ("{not json", "MALFORMED_FRAME"),
    ("[1, 2]", "MALFORMED_FRAME"),
    ('{"id": 1}', "INVALID_FIELD"),
    ('{"id": 1, "type": "no.such.type"}', "UNKNOWN_MESSAGE_TYPE"),
    ('{"id": 1, "type": "result"}', "UNKNOWN_MESSAGE_TYPE"),
    ('{"id": 1, "type": "playlist.add", "payload": []}', "INVALID_FIELD"),
    ('{"id": 1, "type": "playlist.add", "payload": {"uris": []}}', "INVALID_FIELD"),
    ('{"id": 1, "type": "playlist.add", "payload": {"id": 7}}', "INVALID_FIELD"),
    ('{"id": 1, "type": "ping", "op_id": 5}', "INVALID_FIELD"),
    ('{"id": {"x": 1}, "type": "ping"}', "INVALID_FIELD"),
    ('{"id": 1, "type": "subscribe", "payload": {"entity": "nothing"}}', "INVALID_FIELD"),
    ('{"id": 1, "type": "subscribe", "payload": {"entity": "playlist:x", "since": -1}}', "INVALID_FIELD"),
])
async def test_bad_frames_get_error_frames_and_the_connection_survives(server, http, frame, code):
    ws = await connect(http, server)
    await ws.send_str(frame)
    err = await recv_json(ws)
    assert err["type"] == "error" and err["error"]["code"] == code, err
    await ws.send_str('{"id": "after", "type": "ping"}')
    pong = await recv_json(ws)
    assert pong == {"id": "after", "type": "pong", "payload": pong["payload"]}
    await ws.close()


async def test_error_echoes_request_id(server, http):
    ws = await connect(http, server)
    await ws.send_str('{"id": "r-9", "type": "bogus"}')
    assert (await recv_json(ws))["id"] == "r-9"
    await ws.close()


async def test_msgpack_request_gets_msgpack_answer(server, http):
    ws = await connect(http, server)
    await ws.send_bytes(msgpack.packb({"id": 3, "type": "ping"}))
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.BINARY
    assert msgpack.unpackb(msg.data)["type"] == "pong"
    await ws.send_bytes(b"\xc1\xc1garbage")
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msgpack.unpackb(msg.data)["error"]["code"] == "MALFORMED_FRAME"
    await ws.close()


async def test_oversize_frame_is_refused_not_fatal(server, http):
    ws = await connect(http, server)
    await ws.send_str(orjson.dumps({"id": 1, "type": "ping", "payload": {"pad": "x" * 5000}}).decode())
    err = await recv_json(ws)
    assert err["error"]["code"] == "FRAME_TOO_LARGE"
    await ws.send_str('{"id": 2, "type": "ping"}')
    assert (await recv_json(ws))["type"] == "pong"
    await ws.close()


async def test_flood_is_rate_limited_per_connection(server, http):
    ws = await connect(http, server)
    other = await connect(http, server, "carol")
    for i in range(40):
        await ws.send_str(f'{{"id": {i}, "type": "ping"}}')
    answers = [await recv_json(ws) for _ in range(40)]
    limited = [a for a in answers if a["type"] == "error"]
    assert limited and all(a["error"]["code"] == "RATE_LIMITED" and a["error"]["details"]["retry_after_ms"] > 0
                           for a in limited)
    # every refusal names the request it refuses (a client matches answers by id)
    assert sorted(a["id"] for a in answers) == list(range(40))
    assert sum(a["type"] == "pong" for a in answers) >= 20
    await other.send_str('{"id": 1, "type": "ping"}')     # another connection is unaffected
    assert (await recv_json(other))["type"] == "pong"
    await ws.close()
    await other.close()


async def test_msgpack_non_string_map_key_is_refused(server, http):
    # msgpack refuses it while parsing (strict_map_key: an int key's hash is not randomised, so a
    # map of colliding int keys would take quadratic time), before the id could be read
    ws = await connect(http, server)
    await ws.send_bytes(msgpack.packb({"id": 9, "type": "ping", "payload": {1: "x"}}))
    err = msgpack.unpackb((await asyncio.wait_for(ws.receive(), 5)).data)
    assert err["id"] is None and err["error"]["code"] == "MALFORMED_FRAME" and "map key" in err["error"]["message"]
    await ws.close()


async def test_rest_requires_a_token_and_answers_spotify_errors(server, http):
    r = await http.get(f"{server.url}/v1/me/player")
    body = await r.json()
    # Spotify's shape; `reason` only on player errors (tekore parses it as one), our code always
    assert r.status == 401 and body == {"error": {"status": 401, "message": body["error"]["message"],
                                                  "code": "UNAUTHORIZED"}}
    r = await http.get(f"{server.url}/v1/no/such/thing", headers={"Authorization": f"Bearer {token('dan')}"})
    assert r.status == 404 and (await r.json())["error"]["status"] == 404


async def test_rest_rate_limit_answers_429_with_retry_after(server, http):
    h = {"Authorization": f"Bearer {token('erin')}"}
    statuses = []
    for _ in range(12):
        r = await http.get(f"{server.url}/v1/no/such/thing", headers=h)
        statuses.append(r.status)
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["error"]["code"] == "RATE_LIMITED"
    assert 429 in statuses


async def test_healthz_and_metrics(server, http):
    r = await http.get(f"{server.url}/healthz")
    assert r.status == 200 and (await r.json())["ok"] is True
    r = await http.get(f"{server.url}/metrics")
    text = await r.text()
    assert "syncopate_connections" in text and "syncopate_host_commits" in text


# -- errors aiohttp's HTTP parser raises, before any handler or middleware runs ---------------------

async def raw_http(server, head: bytes) -> tuple[int, dict, bytes]:
    """Send `head` on a fresh socket, read the answer to EOF (a refused request closes the
    connection) and split it into status, headers and body."""
    reader, writer = await asyncio.open_connection(server.spec.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


def spotify_error(status, headers, body):
    assert headers["content-type"].startswith("application/json"), headers
    assert int(headers["content-length"]) == len(body)
    err = orjson.loads(body)
    assert set(err) == {"error"} and set(err["error"]) == {"status", "message", "code"}, err
    assert err["error"]["status"] == status and err["error"]["message"], err
    return err["error"]["code"]


@pytest.mark.parametrize("head,status,code", [
    # a 100 KB query string: over the request-line limit (8190 bytes)
    (b"GET /v1/search?q=" + b"a" * 100_000 + b"&type=track HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI_TOO_LONG"),
    (b"GET /v1/ws?token=" + b"t" * 9000 + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n", 414, "URI_TOO_LONG"),
    # one over-long header, by its value and by its name
    (b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"b" * 100_000 + b"\r\n\r\n", 431,
     "HEADERS_TOO_LARGE"),
    (b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-" + b"n" * 9000 + b": 1\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
    # more headers than the parser takes
    (b"GET /v1/me HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431,
     "HEADERS_TOO_LARGE"),
    # not HTTP at all
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "BAD_REQUEST"),
    (b"GET /v1/me HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400, "BAD_REQUEST"),
])
async def test_http_parser_errors_answer_spotify_error_shape(server, head, status, code):
    st, headers, body = await raw_http(server, head)
    assert st == status, body
    assert spotify_error(st, headers, body) == code      # and raw_http read to EOF: the server closed


async def test_request_line_and_headers_just_within_the_limits_are_served(server):
    """The limits are where the docs say: a request target (path and query) of 8190 bytes reaches
    the app (a 401 from the auth middleware, in the same shape), one byte more is refused by the parser."""
    path = b"/v1/search?q=" + b"a" * (8190 - len(b"/v1/search?q="))
    close = b"Host: x\r\nConnection: close\r\n\r\n"
    st, headers, body = await raw_http(server, b"GET " + path + b" HTTP/1.1\r\n" + close)
    assert st == 401 and spotify_error(st, headers, body) == "UNAUTHORIZED"
    st, headers, body = await raw_http(server, b"GET " + path + b"a HTTP/1.1\r\n" + close)
    assert st == 414 and spotify_error(st, headers, body) == "URI_TOO_LONG"
    # a header of 8191 bytes (name, ": " excluded, and value) is served, one more is refused
    name = b"X-Pad"
    value = b"v" * (8191 - len(name))
    st, headers, body = await raw_http(server, b"GET /v1/me HTTP/1.1\r\n" + name + b": " + value + b"\r\n" + close)
    assert st == 401 and spotify_error(st, headers, body) == "UNAUTHORIZED"
    st, headers, body = await raw_http(server, b"GET /v1/me HTTP/1.1\r\n" + name + b": " + value + b"v\r\n" + close)
    assert st == 431 and spotify_error(st, headers, body) == "HEADERS_TOO_LARGE"


async def test_long_query_through_an_http_client(server, http):
    r = await http.get(f"{server.url}/v1/search", params={"q": "x" * 100_000, "type": "track"},
                       headers={"Authorization": f"Bearer {token('fay')}"})
    body = await r.json()
    assert r.status == 414 and body["error"]["status"] == 414 and body["error"]["code"] == "URI_TOO_LONG"


# -- the decoding layer, end to end ----------------------------------------------------------------

@pytest.mark.parametrize("value", [
    msgpack.ExtType(1, b"\xc0"),           # the frame that used to kill the host stream
    msgpack.Timestamp(1, 0),               # ext type -1
    2 ** 64 - 1,
    float("inf"),
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
])
async def test_non_plain_msgpack_values_are_refused_before_the_host(server, http, value):
    ws = await connect(http, server)
    frame = msgpack.packb({"id": 9, "type": "playlist.add", "payload": {"id": "p1", "uris": [value]}},
                          use_bin_type=True, strict_types=False)
    await ws.send_bytes(frame)
    msg = await asyncio.wait_for(ws.receive(), 5)
    err = msgpack.unpackb(msg.data)
    assert err["type"] == "error" and err["id"] == 9 and err["error"]["code"] == "MALFORMED_FRAME", err
    assert err["error"]["message"].startswith("frame.payload.uris[0]"), err
    # the connection and the host stream live on: another user's request is still answered
    other = await connect(http, server, "gus")
    await other.send_str('{"id": "s", "type": "subscribe", "payload": {"entity": "counter:x"}}')
    await other.send_str('{"id": "after", "type": "ping"}')
    answers = {a["id"]: a for a in [await recv_json(other), await recv_json(other)]}
    assert answers["after"]["type"] == "pong"
    await ws.send_bytes(msgpack.packb({"id": 10, "type": "ping"}))
    assert msgpack.unpackb((await asyncio.wait_for(ws.receive(), 5)).data)["type"] == "pong"
    await ws.close()
    await other.close()



async def test_a_client_chosen_name_never_becomes_a_metric_label(server, http):
    # label values are a closed set: random client names would make metric series without bound
    ws = await http.ws_connect(f"{server.url}/v1/ws?token={token('dora')}&client=zz-random-label-9")
    assert (await recv_json(ws))["type"] == "hello"
    text = await (await http.get(f"{server.url}/metrics")).text()
    assert "zz-random-label-9" not in text
    assert 'syncopate_connections{client="other"} 1.0' in text
    await ws.close()
