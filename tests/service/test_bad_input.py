"""A corpus of bad requests through real nginx and real lighttpd: every one gets a 4xx with a
JSON error body, nothing is queued, and the service still answers /ping afterwards."""
import json
import socket
import unittest

from tests.service.stack import Stack

GOOD_ID = "0123456789abcdef0123456789abcdef"


def body(**fields):
    d = {"prompt": "a cat"}
    d.update(fields)
    return json.dumps(d).encode()


def raw_field(name, text):
    """A body with a field written verbatim (for what json.dumps cannot write)."""
    return b'{"prompt": "a cat", "' + name.encode() + b'": ' + text + b"}"


# (name, method, path, body bytes or None, expected status or None for any 4xx)
CORPUS = [
    # malformed JSON: 400
    ("empty body", "POST", "/generate/queue", b"", 400),
    ("unterminated object", "POST", "/generate/queue", b'{"prompt": "a"', 400),
    ("trailing comma", "POST", "/generate/queue", b'{"prompt": "a",}', 400),
    ("single quotes", "POST", "/generate/queue", b"{'prompt': 'a'}", 400),
    ("bare word", "POST", "/generate/queue", b"prompt=a+cat", 400),
    ("trailing garbage", "POST", "/generate/queue", b'{"prompt": "a"} extra', 400),
    ("two objects", "POST", "/generate", b'{"prompt": "a"}{"prompt": "b"}', 400),
    ("raw NUL byte", "POST", "/generate/queue", b'{"prompt": "a\x00b"}', 400),
    ("NUL before the body", "POST", "/generate/queue", b'\x00{"prompt": "a"}', 400),
    ("invalid UTF-8 byte", "POST", "/generate/queue", b'{"prompt": "caf\xe9"}', 400),
    ("overlong UTF-8", "POST", "/generate/queue", b'{"prompt": "\xc0\xaf"}', 400),
    ("UTF-8 surrogate", "POST", "/generate/queue", b'{"prompt": "\xed\xa0\x80"}', 400),
    ("deep nesting", "POST", "/generate/queue", b"[" * 30000 + b"]" * 30000, 400),
    ("deep nesting in a field", "POST", "/generate/queue",
     raw_field("seed", b'{"a":' * 50 + b"1" + b"}" * 50), 400),
    # the body's shape and the fields: 422 naming the field
    ("array body", "POST", "/generate/queue", b"[]", 422),
    ("string body", "POST", "/generate/queue", b'"a cat"', 422),
    ("null body", "POST", "/generate/queue", b"null", 422),
    ("no prompt", "POST", "/generate/queue", b"{}", 422),
    ("empty prompt", "POST", "/generate/queue", body(prompt=""), 422),
    ("prompt number", "POST", "/generate/queue", body(prompt=42), 422),
    ("prompt list", "POST", "/generate/queue", body(prompt=["a"]), 422),
    ("prompt null", "POST", "/generate/queue", body(prompt=None), 422),
    ("escaped NUL in prompt", "POST", "/generate/queue", body(prompt="a\u0000b"), 422),
    ("hostile field name, bad prompt", "POST", "/generate/queue",
     body(**{"\u0001<script>\r\n" + "x" * 500: 1, "prompt": 5}), 422),
    ("width fraction", "POST", "/generate/queue", raw_field("width", b"64.5"), 422),
    ("width word", "POST", "/generate/queue", body(width="sixty-four"), 422),
    ("width hex string", "POST", "/generate/queue", body(width="0x40"), 422),
    ("width negative", "POST", "/generate/queue", body(width=-64), 422),
    ("width zero", "POST", "/generate/queue", body(width=0), 422),
    ("width not multiple of 16", "POST", "/generate/queue", body(width=100), 422),
    ("width huge", "POST", "/generate/queue", body(width=1000000), 422),
    ("width beyond int64", "POST", "/generate/queue",
     raw_field("width", b"99999999999999999999999"), 422),
    ("height too small", "POST", "/generate", body(height=8), 422),
    ("height bool", "POST", "/generate/queue", body(height=True), 422),
    ("steps 0", "POST", "/generate/queue", body(num_inference_steps=0), 422),
    ("steps 100000", "POST", "/generate/queue", body(num_inference_steps=100000), 422),
    ("steps negative", "POST", "/generate", body(num_inference_steps=-1), 422),
    ("steps float", "POST", "/generate/queue", body(num_inference_steps=2.5), 422),
    ("steps exponent fraction", "POST", "/generate/queue",
     raw_field("num_inference_steps", b"1e-1"), 422),
    ("guidance NaN", "POST", "/generate/queue", raw_field("guidance_scale", b"NaN"), 422),
    ("guidance Infinity", "POST", "/generate/queue", raw_field("guidance_scale", b"Infinity"),
     422),
    ("guidance -Infinity", "POST", "/generate", raw_field("guidance_scale", b"-Infinity"),
     422),
    ("guidance overflow", "POST", "/generate/queue", raw_field("guidance_scale", b"1e999"),
     422),
    ("guidance word", "POST", "/generate/queue", body(guidance_scale="high"), 422),
    ("guidance NaN string", "POST", "/generate/queue", body(guidance_scale="nan"), 422),
    ("guidance negative", "POST", "/generate/queue", body(guidance_scale=-1), 422),
    ("seed negative", "POST", "/generate/queue", body(seed=-2), 422),
    ("seed 2^63", "POST", "/generate/queue", body(seed=2 ** 63), 422),
    ("seed beyond 2^53", "POST", "/generate/queue", body(seed=2 ** 53), 422),
    ("seed float", "POST", "/generate/queue", body(seed=1.5), 422),
    ("seed word", "POST", "/generate/queue", body(seed="seven"), 422),
    ("n 0", "POST", "/generate/queue", body(n=0), 422),
    ("n 11", "POST", "/generate/queue", body(n=11), 422),
    ("n 2 on /generate", "POST", "/generate", body(n=2), 422),
    ("output_format gif", "POST", "/generate/queue", body(output_format="gif"), 422),
    ("output_quality 101", "POST", "/generate/queue", body(output_quality=101), 422),
    ("openai size", "POST", "/v1/images/generations", body(size="big"), 422),
    ("openai no prompt", "POST", "/v1/images/generations", b"{}", 422),
    ("openai n 11", "POST", "/v1/images/generations", body(n=11), 422),
    ("a1111 batch 11", "POST", "/sdapi/v1/txt2img", body(batch_size=11), 422),
    ("a1111 malformed", "POST", "/sdapi/v1/txt2img", b"{", 400),
    ("group id bad", "GET", "/queue/group/xyz", None, 400),
    ("group unknown", "DELETE", "/queue/group/" + GOOD_ID, None, 404),
    # sizes: 413
    ("10 MB body", "POST", "/generate/queue", b'{"prompt": "' + b"a" * (10 << 20) + b'"}', 413),
    ("just over max_body", "POST", "/generate", body(prompt="a" * (64 << 10)), 413),
    # ids
    ("id too short", "GET", "/queue/status/abc", None, 400),
    ("id upper case", "GET", "/result/" + GOOD_ID.upper(), None, 400),
    ("id 33 chars", "GET", "/result/" + GOOD_ID + "0", None, 400),
    ("id non-hex", "DELETE", "/queue/" + GOOD_ID[:-1] + "g", None, 400),
    ("id encoded traversal", "GET", "/result/..%2F..%2Fetc%2Fpasswd", None, 400),
    ("id SQL", "GET", "/queue/status/'%20OR%20'1'='1", None, 400),
    ("id encoded NUL", "GET", "/result/" + GOOD_ID[:16] + "%00" + GOOD_ID[:15], None, None),
    ("id with slash", "GET", "/result/" + GOOD_ID + "/extra", None, 400),
    ("id long", "GET", "/queue/status/" + "a" * 4000, None, 400),
    ("id unknown", "GET", "/result/" + GOOD_ID, None, 404),
    ("raw traversal", "GET", "/result/../../../etc/passwd", None, None),
    ("control character", "GET", "/result/\x01\x02", None, None),
    ("URI of 20 KB", "GET", "/queue/status/" + "b" * 20000, None, None),
]


# Requests the web server refuses itself, before fluxcgi sees them:
# (name, raw bytes, {server: (status, code)}).  nginx answers a header over its buffers
# with its own 494, sent as 400; lighttpd answers 431.  TRACE is refused by nginx (405) and
# passed by lighttpd, to which fluxcgi has no such endpoint (404).
WEB_SERVER_ERRORS = [
    ("HTTP/3.0", b"GET /ping HTTP/3.0\r\nHost: x\r\n\r\n",
     {"nginx": (505, "not_supported"), "lighttpd": (505, "not_supported")}),
    ("HTTP/2.0 without upgrade", b"GET /ping HTTP/2.0\r\nHost: x\r\n\r\n",
     {"nginx": (505, "not_supported"), "lighttpd": (505, "not_supported")}),
    ("unknown Transfer-Encoding",
     b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
     b"Connection: close\r\n\r\n",
     {"nginx": (501, "not_supported"), "lighttpd": (501, "not_supported")}),
    ("TRACE", b"TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
     {"nginx": (405, "method_not_allowed"), "lighttpd": (404, "not_found")}),
    ("one 70 KB header",
     b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n"
     b"Connection: close\r\n\r\n",
     {"nginx": (400, "too_large"), "lighttpd": (431, "too_large")}),
    ("ten 7 KB headers",
     b"GET /ping HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 7000) for i in range(10))
     + b"Connection: close\r\n\r\n",
     {"nginx": (400, "too_large"), "lighttpd": (431, "too_large")}),
    ("garbage request line", b"GARBAGE\r\n\r\n",
     {"nginx": (400, "bad_request"), "lighttpd": (400, "bad_request")}),
    ("URI of 20 KB", b"GET /queue/status/" + b"b" * 20000 + b" HTTP/1.1\r\nHost: x\r\n"
     b"Connection: close\r\n\r\n",
     {"nginx": (414, "too_large"), "lighttpd": (431, "too_large")}),
]


def send_raw(port, data):
    """Sends bytes, reads until the server closes; returns (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    out = b""
    try:
        s.sendall(data)
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    return int(lines[0].split()[1]), headers, rest


def raw_request(port, method, path, payload):
    """Sends bytes as they are (http.client refuses control characters in paths)."""
    req = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" % (
        method.encode(), path.encode("latin-1"))
    if payload is not None:
        req += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(payload)
    req += b"\r\n" + (payload or b"")
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    out = b""
    try:
        s.sendall(req)
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (BrokenPipeError, ConnectionResetError):
        # a server may answer 413 and close before the whole body is sent
        pass
    finally:
        s.close()
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    if headers.get("transfer-encoding") == "chunked":
        data, rest2 = b"", rest
        while rest2:
            size, _, rest2 = rest2.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            data, rest2 = data + rest2[:n], rest2[n + 2:]
        rest = data
    return status, headers, rest


class BadInput:
    server = None

    @classmethod
    def setUpClass(cls):
        cls.s = Stack("bad-input-" + cls.server, cls.server).start()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_corpus(self):
        self.assertGreaterEqual(len(CORPUS), 40)
        for name, method, path, payload, want in CORPUS:
            with self.subTest(name):
                st, h, b = raw_request(self.s.port, method, path, payload)
                if want is None:
                    self.assertTrue(400 <= st < 500, (st, b[:200]))
                else:
                    self.assertEqual(st, want, b[:300])
                self.assertTrue(h.get("content-type", "").startswith("application/json"),
                                (h, b[:200]))
                err = json.loads(b)["error"]
                self.assertTrue(err["code"] and err["message"], err)
                if st == 422 and "body" not in name:
                    # a field error starts with the field's name
                    self.assertRegex(err["message"], r"^[a-z_]+[:.]|^[\x01-\x7f]", err)
        # nothing was queued, and the service still answers
        st, _, j = self.s.json("GET", "/queue/status")
        self.assertEqual((st, j["queued"], j["running"]), (200, 0, 0))
        st, _, j = self.s.json("GET", "/ping")
        self.assertEqual((st, j["status"]), (200, "ok"))
        st, _, b = self.s.request("POST", "/generate", {"prompt": "still fine", "seed": 1})
        self.assertEqual(st, 200)

    def test_web_server_errors_are_json(self):
        for name, data, want in WEB_SERVER_ERRORS:
            with self.subTest(name):
                st, h, b = send_raw(self.s.port, data)
                self.assertTrue(h.get("content-type", "").startswith("application/json"),
                                (st, h, b[:200]))
                self.assertEqual((st, json.loads(b)["error"]["code"]), want[self.server])
        self.assertEqual(self.s.json("GET", "/ping")[0], 200)

    def test_service_down_is_json(self):
        # fluxcgi gone: nginx answers 502, lighttpd 503, both from conf/errors/
        self.s.kill_fluxcgi()
        try:
            st, h, b = self.s.request("GET", "/ping")
            self.assertEqual(st, {"nginx": 502, "lighttpd": 503}[self.server], b[:200])
            self.assertTrue(h.get("content-type", "").startswith("application/json"), h)
            self.assertEqual(json.loads(b)["error"]["code"], "unavailable")
        finally:
            self.s.start_fluxcgi()

    def test_field_named(self):
        for field, value in [("width", 100), ("height", -16), ("num_inference_steps", 0),
                             ("guidance_scale", 1000), ("seed", -5), ("prompt", "")]:
            with self.subTest(field):
                st, _, j = self.s.json("POST", "/generate/queue", {"prompt": "x", field: value})
                self.assertEqual(st, 422, j)
                self.assertTrue(j["error"]["message"].startswith(field), j)


class TestBadInputNginx(BadInput, unittest.TestCase):
    server = "nginx"


class TestBadInputLighttpd(BadInput, unittest.TestCase):
    server = "lighttpd"


if __name__ == "__main__":
    unittest.main()
