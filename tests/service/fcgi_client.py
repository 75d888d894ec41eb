"""fcgi_client.py - a small FastCGI client for tests that talk to fluxcgi's socket directly.

Builds records byte by byte (so tests can also send broken ones) and reads answers back:
enough of the protocol to play a web server, a slow peer or a hostile one.
"""
import socket
import struct

BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 2, 3, 4, 5, 6, 7
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11
RESPONDER, AUTHORIZER = 1, 2
KEEP_CONN = 1


def record(rtype, rid, content=b"", padding=0):
    return struct.pack(">BBHHBB", 1, rtype, rid, len(content), padding, 0) + content + \
        b"\0" * padding


def nv_len(n):
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def pairs(d):
    out = b""
    for k, v in d.items():
        k, v = k.encode(), v.encode()
        out += nv_len(len(k)) + nv_len(len(v)) + k + v
    return out


def begin(rid, role=RESPONDER, flags=0):
    return record(BEGIN_REQUEST, rid, struct.pack(">HB5x", role, flags))


def request_bytes(rid, method, uri, body=b"", keep=False, extra=None, content_length=None):
    params = {"REQUEST_METHOD": method, "REQUEST_URI": uri, "SERVER_PROTOCOL": "HTTP/1.1",
              "CONTENT_LENGTH": str(len(body) if content_length is None else content_length)}
    params.update(extra or {})
    p = pairs(params)
    out = begin(rid, flags=KEEP_CONN if keep else 0)
    for i in range(0, len(p), 65535):
        out += record(PARAMS, rid, p[i:i + 65535])
    out += record(PARAMS, rid)
    for i in range(0, len(body), 65535):
        out += record(STDIN, rid, body[i:i + 65535])
    out += record(STDIN, rid)
    return out


class Conn:
    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read_record(self):
        """(type, id, content), or None at the end of the stream."""
        while True:
            if len(self.buf) >= 8:
                _, t, rid, clen, plen, _ = struct.unpack(">BBHHBB", self.buf[:8])
                if len(self.buf) >= 8 + clen + plen:
                    content = self.buf[8:8 + clen]
                    self.buf = self.buf[8 + clen + plen:]
                    return t, rid, content
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def response(self, rid):
        """Reads one answer to request rid: (status, headers dict, body, protocol_status)."""
        out = b""
        while True:
            r = self.read_record()
            if r is None:
                raise EOFError("connection closed before END_REQUEST")
            t, got, content = r
            if got != rid:
                continue
            if t == STDOUT:
                out += content
            elif t == END_REQUEST:
                proto = content[4]
                break
        if not out:
            return None, {}, b"", proto
        head, _, body = out.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        status = int(headers.get("status", "200").split()[0])
        return status, headers, body, proto

    def closed_by_peer(self):
        """True when the peer has closed (reads until EOF, dropping data)."""
        try:
            while self.s.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()
