"""redis-py (the current PyPI release) with its default settings against a Pylon sidecar.

Run by the integration tests (ClientCompatibilityTests) with the sidecar's port:
    python3 redis_py_check.py PORT
Prints one line per check; exits non-zero at the first that fails.
"""
import sys
import uuid

import redis


def check(name, got, want):
    if got != want:
        print(f"FAIL {name}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {name}")


port = int(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=port)  # defaults: RESP3 (HELLO 3) since redis-py 8
p = f"py:{uuid.uuid4().hex[:8]}:"

check("connect (HELLO 3) and PING", r.ping(), True)
check("the connection speaks RESP3", b"resp=3" in r.client_info_raw() if hasattr(r, "client_info_raw") else r.execute_command("CLIENT", "INFO").endswith(b"resp=3\n"), True)
check("SET", r.set(p + "s", "v"), True)
check("GET reads its own write", r.get(p + "s"), b"v")
check("SET NX on an existing key", r.set(p + "s", "w", nx=True), None)
check("INCR answers the real count", [r.incr(p + "n") for _ in range(3)], [1, 2, 3])
check("INCRBYFLOAT", r.incrbyfloat(p + "f", 1.5), 1.5)
check("HSET", r.hset(p + "h", mapping={"a": "1", "b": "2"}), 2)
check("HGETALL is a dict (a RESP3 map)", r.hgetall(p + "h"), {b"a": b"1", b"b": b"2"})
check("SADD", r.sadd(p + "set", "x", "y"), 2)
check("SMEMBERS is a set (a RESP3 set)", r.smembers(p + "set"), {b"x", b"y"})
check("ZADD", r.zadd(p + "z", {"m": 1.5}), 1)
check("ZSCORE is a float (a RESP3 double)", r.zscore(p + "z", "m"), 1.5)
check("ZINCRBY is a float", r.zincrby(p + "z", 1, "m"), 2.5)
check("ZRANGE WITHSCORES", r.zrange(p + "z", 0, -1, withscores=True), [(b"m", 2.5)])
check("ZPOPMIN", r.zpopmin(p + "z"), [(b"m", 2.5)])
check("GETDEL", r.getdel(p + "s"), b"v")
check("GET of a missing key is None (a RESP3 null)", r.get(p + "s"), None)
check("GETSET", (r.set(p + "g", "old"), r.getset(p + "g", "new"))[1], b"old")
check("SET … GET", r.set(p + "g", "newer", get=True), b"new")
check("SPOP of a one-member set", (r.sadd(p + "one", "only"), r.spop(p + "one"))[1], b"only")
check("EXPIRE and TTL", (r.expire(p + "g", 100), 95 <= r.ttl(p + "g") <= 100), (True, True))
try:
    r.hset(p + "set", "f", "v")
    check("WRONGTYPE is raised", "no error", "ResponseError")
except redis.ResponseError as error:
    check("WRONGTYPE is raised", str(error).startswith("WRONGTYPE"), True)
pipe = r.pipeline(transaction=False)
for i in range(100):
    pipe.set(f"{p}k{i}", i)
    pipe.incr(p + "pn")
    pipe.get(f"{p}k{i}")
replies = pipe.execute()
check("pipeline: replies in order", replies, [x for i in range(100) for x in (True, i + 1, str(i).encode())])
keys = set(r.scan_iter(match=p + "k*", count=50))
check("scan_iter sees every key written", keys, {f"{p}k{i}".encode() for i in range(100)})
check("DEL across slots answers the total", r.delete(*[f"{p}k{i}" for i in range(100)]), 100)
r2 = redis.Redis(host="127.0.0.1", port=port, protocol=2)
check("RESP2 (protocol=2): HGETALL", r2.hgetall(p + "h"), {b"a": b"1", b"b": b"2"})
check("RESP2: ZSCORE", r2.zscore(p + "z2", "m"), None)
print("all checks passed")
