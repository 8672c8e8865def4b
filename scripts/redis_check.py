#!/usr/bin/env python3
"""Writes a deterministic data set to a redis server (raw RESP over a socket, pipelined) and
reads it back, comparing with what was written. Usage: redis_check.py PORT write|verify|flush
`verify` compares every key with the model (the same deterministic data set) and prints
`digest <sha256>` of what was read; exits 1 on any difference."""
import hashlib
import random
import socket
import sys

PORT = int(sys.argv[1])
MODE = sys.argv[2]


def model():
    """The data set: (kind, key, value) with value in a canonical form."""
    r = random.Random(20240531)
    data = []
    for i in range(20000):
        roll = r.random()
        if roll < 0.80:
            n = r.randint(0, 200)
        elif roll < 0.97:
            n = r.randint(200, 20000)
        elif roll < 0.998:
            n = r.randint(20000, 300000)
        else:
            n = r.randint(1 << 20, 4 << 20)
        v = (("%d:" % i) * (n // 6 + 1)).encode()[:n]
        data.append(("string", b"s:%d" % i, v))
    for i in range(300):
        data.append(("list", b"l:%d" % i, [b"e%d-%d" % (i, j) * r.randint(1, 20) for j in range(r.randint(1, 3000))]))
    for i in range(300):
        data.append(("hash", b"h:%d" % i, {b"f%d" % j: b"v%d" % (j * i) * r.randint(1, 30) for j in range(r.randint(1, 1000))}))
    for i in range(100):
        data.append(("set", b"t:%d" % i, sorted({b"m%d" % r.randint(0, 100000) for _ in range(r.randint(1, 2000))})))
    for i in range(100):
        data.append(("zset", b"z:%d" % i, sorted((b"m%d" % j, r.randint(-1000, 1000)) for j in range(r.randint(1, 1500)))))
    return data


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, int):
            a = str(a).encode()
        elif isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", PORT), timeout=60)
        self.buf = b""

    def _fill(self):
        d = self.s.recv(1 << 20)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b":"):
            return rest
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v
        if t == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError("bad reply %r" % line)

    def pipeline(self, cmds, batch=200):
        out = []
        for i in range(0, len(cmds), batch):
            part = cmds[i:i + batch]
            self.s.sendall(b"".join(enc(*c) for c in part))
            out.extend(self.reply() for _ in part)
        return out


def canonical(kind, v):
    if kind == "string":
        return v
    if kind == "list":
        return b"\0".join(v)
    if kind == "hash":
        return b"\0".join(k + b"=" + x for k, x in sorted(v.items()))
    if kind == "set":
        return b"\0".join(sorted(v))
    return b"\0".join(m + b"=" + str(s).encode() for m, s in sorted(v, key=lambda t: (t[1], t[0])))


def main():
    c = Conn()
    data = model()
    if MODE == "flush":
        c.pipeline([("FLUSHALL",)])
        return 0
    if MODE == "write":
        cmds = []
        for kind, k, v in data:
            if kind == "string":
                # big values in two parts: SET then APPEND
                if len(v) > 100000:
                    cmds += [("SET", k, v[:len(v) // 2]), ("APPEND", k, v[len(v) // 2:])]
                else:
                    cmds.append(("SET", k, v))
            elif kind == "list":
                for j in range(0, len(v), 500):
                    cmds.append(("RPUSH", k) + tuple(v[j:j + 500]))
            elif kind == "hash":
                items = [x for kv in v.items() for x in kv]
                for j in range(0, len(items), 400):
                    cmds.append(("HSET", k) + tuple(items[j:j + 400]))
            elif kind == "set":
                cmds.append(("SADD", k) + tuple(v))
            else:
                args = []
                for m, s in v:
                    args += [s, m]
                cmds.append(("ZADD", k) + tuple(args))
        # churn: temporary keys written and deleted (frees inside the server)
        for i in range(5000):
            cmds.append(("SET", b"tmp:%d" % i, b"x" * (i % 3000)))
        for i in range(5000):
            cmds.append(("DEL", b"tmp:%d" % i))
        c.pipeline(cmds)
        print("wrote %d keys with %d commands" % (len(data), len(cmds)))
        return 0
    # verify
    cmds = []
    for kind, k, v in data:
        cmds.append({"string": ("GET", k), "list": ("LRANGE", k, 0, -1), "hash": ("HGETALL", k),
                     "set": ("SMEMBERS", k), "zset": ("ZRANGE", k, 0, -1, "WITHSCORES")}[kind])
    got = c.pipeline(cmds, batch=100)
    want_h, got_h, bad = hashlib.sha256(), hashlib.sha256(), 0
    for (kind, k, v), g in zip(data, got):
        if kind == "hash":
            g = dict(zip(g[0::2], g[1::2])) if g else {}
        elif kind == "set":
            g = sorted(g or [])
        elif kind == "zset":
            g = [(m, int(float(s))) for m, s in zip(g[0::2], g[1::2])] if g else []
        elif kind == "list":
            g = g or []
        w, r = canonical(kind, v), canonical(kind, g if g is not None else b"<missing>")
        want_h.update(k + b"\0" + w)
        got_h.update(k + b"\0" + r)
        if w != r:
            bad += 1
            if bad <= 5:
                print("MISMATCH %s %s: want %d bytes, got %d bytes" % (kind, k.decode(), len(w), len(r)))
    extra = int(c.pipeline([("DBSIZE",)])[0])
    print("read %d keys; dbsize %d; digest written %s, digest read %s" % (len(data), extra, want_h.hexdigest()[:16], got_h.hexdigest()[:16]))
    if extra != len(data):
        print("MISMATCH dbsize %d, want %d" % (extra, len(data)))
        bad += 1
    return 1 if bad or want_h.digest() != got_h.digest() else 0


sys.exit(main())
