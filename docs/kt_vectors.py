#!/usr/bin/env python3
"""Recomputes the key-transparency vectors of docs/kt.md from the specification alone,
with Python's standard library and `cryptography` (>= 44) for Ed25519. It shares no code
with the server: when its output matches the document (and the server's unit test), two
independent implementations agree.
Run: python3 docs/kt_vectors.py
"""
import hashlib
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def sha(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def ref(server, user):
    name = server.encode()
    return struct.pack(">H", len(name)) + name + struct.pack(">Q", user)


def entry(server, user, seq, fingerprint, posted_at_ms, prev):
    return (b"secretd/v1/kt-entry" + ref(server, user) + struct.pack(">Q", seq)
            + fingerprint + struct.pack(">Q", posted_at_ms) + prev)


def leaf(data):  # RFC 9162 leaf hash
    return sha(b"\x00", data)


def mth(hashes):  # RFC 9162 Merkle tree hash over leaf hashes
    if not hashes:
        return sha()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return sha(b"\x01", mth(hashes[:k]), mth(hashes[k:]))


def bit(key, i):
    return (key[i // 8] >> (7 - i % 8)) & 1


def map_hash(entries, depth=0):  # the prefix tree, from its definition
    if not entries:
        return bytes(32)
    if len(entries) == 1:
        (k, v), = entries.items()
        return sha(b"\x02", k, v)
    zeros = {k: v for k, v in entries.items() if not bit(k, depth)}
    ones = {k: v for k, v in entries.items() if bit(k, depth)}
    return sha(b"\x03", map_hash(zeros, depth + 1), map_hash(ones, depth + 1))


def map_path(entries, key):
    path, depth, here = [], 0, dict(entries)
    while len(here) > 1:
        side = bit(key, depth)
        sibling = {k: v for k, v in here.items() if bit(k, depth) != side}
        path.append(map_hash(sibling, depth + 1))
        here = {k: v for k, v in here.items() if bit(k, depth) == side}
        depth += 1
    return path


def map_key(server, user):
    return sha(b"secretd/v1/kt-map-key", ref(server, user))


e1 = entry("a.test", 42, 1, b"\x11" * 32, 1000, bytes(32))
e2 = entry("a.test", 42, 2, b"\x22" * 32, 2000, leaf(e1))
e3 = entry("a.test", 7, 1, b"\x33" * 32, 3000, bytes(32))
log_root = mth([leaf(e1), leaf(e2), leaf(e3)])
entries = {map_key("a.test", 42): leaf(e2), map_key("a.test", 7): leaf(e3)}
map_root = map_hash(entries)
head = (b"secretd/v1/kt-head" + struct.pack(">H", 6) + b"a.test" + struct.pack(">Q", 3)
        + log_root + map_root + struct.pack(">Q", 4000))
key = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

print("entry1 =", e1.hex())
print("entry1.hash =", leaf(e1).hex())
print("entry2.hash =", leaf(e2).hex())
print("entry3.hash =", leaf(e3).hex())
print("log_root(3) =", log_root.hex())
print("map_key(42) =", map_key("a.test", 42).hex())
print("map_key(7) =", map_key("a.test", 7).hex())
print("map_root =", map_root.hex())
print("map_path(42) =", ",".join(h.hex() for h in map_path(entries, map_key("a.test", 42))))
print("head_input =", head.hex())
print("public_key =", public.hex())
print("signature =", key.sign(head).hex())

# The erased entry (docs/kt.md §1): user 42's keys erased at 5,000 ms, logged as their
# entry 3 (fingerprint 32 zero bytes) after the three above; the map's value for 42
# becomes it.
e4 = entry("a.test", 42, 3, bytes(32), 5000, leaf(e2))
log_root4 = mth([leaf(e1), leaf(e2), leaf(e3), leaf(e4)])
entries4 = {map_key("a.test", 42): leaf(e4), map_key("a.test", 7): leaf(e3)}
print("erased = ", e4.hex(), sep="")
print("erased.hash =", leaf(e4).hex())
print("log_root(4) =", log_root4.hex())
print("map_root(4) =", map_hash(entries4).hex())
print("map_path(42, 4) =", ",".join(h.hex() for h in map_path(entries4, map_key("a.test", 42))))
