#!/usr/bin/env python3
"""Recomputes the test vectors of docs/e2ee.md from the specification alone, with
Python's standard library and the `cryptography` package, version 44 or later for
Argon2id (pip install 'cryptography>=44'; checked with 48.0.0). Without Argon2id it
stops with an error: the default blob (version 2) is Argon2id.

It shares no code with the Rust client: when its output matches the vectors in the
document (and the client's unit tests), two independent implementations agree.
Run: python3 docs/e2ee_vectors.py
"""
import hashlib
import hmac
import struct
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(ikm, salt, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hm(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def user_ref(homeserver, user_id):
    hs = homeserver.encode()
    return struct.pack(">H", len(hs)) + hs + struct.pack(">Q", user_id)


seed = bytes(range(0x00, 0x10))
stream = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff").bytes
epoch = bytes(range(0xA0, 0xB0))
salt = bytes(range(0xB0, 0xC0))
sender = user_ref("", 42)

ck0 = hkdf(seed, stream, b"secretd/v1/chain" + epoch, 32)
ck1 = hm(ck0, b"\x02")
ck2 = hm(ck1, b"\x02")
mk2 = hm(ck2, b"\x01")
okm = hkdf(mk2, salt, b"secretd/v1/message" + stream + struct.pack(">Q", 2) + sender, 44)
key, nonce = okm[:32], okm[32:]
aad = b"secretd/v1/event" + stream + struct.pack(">Q", 2) + epoch
envelope = b"\x01" + epoch + salt + AESGCM(key).encrypt(nonce, b"hello", aad)

print("ratchet.ck0 =", ck0.hex())
print("ratchet.ck1 =", ck1.hex())
print("ratchet.ck2 =", ck2.hex())
print("ratchet.mk2 =", mk2.hex())
print("message.key =", key.hex())
print("message.nonce =", nonce.hex())
print("envelope =", envelope.hex())

try:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # cryptography < 44
    raise SystemExit("Argon2id needs cryptography >= 44: pip install 'cryptography>=44'")


def argon2id(password, salt, memory_kib, passes, lanes):
    return Argon2id(
        salt=salt, length=32, iterations=passes, lanes=lanes, memory_cost=memory_kib
    ).derive(password)


password = "correct horse battery staple".encode()
bsalt = bytes(range(0xC0, 0xD0))
bnonce = bytes(range(0xD0, 0xDC))
bkey = b"not really a PKCS#8 key"

# Version 2: Argon2id 64 MiB / 3 / 1, owner ref("", 42), AAD = label || header.
header = (b"sdpk" + b"\x02" + b"\x02" + struct.pack(">III", 65536, 3, 1)
          + user_ref("", 42) + bsalt + bnonce)
wrap = argon2id(password, bsalt, 65536, 3, 1)
blob = header + AESGCM(wrap).encrypt(bnonce, bkey, b"secretd/v1/blob" + header)
print("blob.v2.key =", wrap.hex())
print("blob.v2 =", blob.hex())

# Version 1 (read only): AAD = header, no owner.
header = b"sdpk" + b"\x01" + b"\x01" + struct.pack(">I", 600000) + bsalt + bnonce
wrap = hashlib.pbkdf2_hmac("sha256", password, bsalt, 600000, 32)
blob = header + AESGCM(wrap).encrypt(bnonce, bkey, header)
print("blob.v1.pbkdf2.key =", wrap.hex())
print("blob.v1.pbkdf2 =", blob.hex())

header = b"sdpk" + b"\x01" + b"\x02" + struct.pack(">III", 19456, 2, 1) + bsalt + bnonce
wrap = argon2id(password, bsalt, 19456, 2, 1)
blob = header + AESGCM(wrap).encrypt(bnonce, bkey, header)
print("blob.v1.argon2id.key =", wrap.hex())
print("blob.v1.argon2id =", blob.hex())

# Safety number (§1): per key, H = label || fp, then 5200 times H = SHA-512(H || fp); the
# first 30 bytes as six 40-bit big-endian numbers, each mod 100000 in five digits; the two
# halves in ascending order, in twelve groups of five.
def safety_half(fp):
    h = b"secretd/v1/safety" + fp
    for _ in range(5200):
        h = hashlib.sha512(h + fp).digest()
    return "".join("%05d" % (int.from_bytes(h[i:i + 5], "big") % 100000) for i in range(0, 30, 5))


digits = "".join(sorted([safety_half(bytes([1] * 32)), safety_half(bytes([2] * 32))]))
print("safety(01..01, 02..02) =", " ".join(digits[i:i + 5] for i in range(0, 60, 5)))
