#!/usr/bin/env python3
"""Recomputes the test vectors of docs/e2ee.md from the specification alone, with
Python's standard library and the `cryptography` package (pip install cryptography).

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

password = "correct horse battery staple".encode()
bsalt = bytes(range(0xC0, 0xD0))
bnonce = bytes(range(0xD0, 0xDC))
header = b"sdpk" + b"\x01" + b"\x01" + struct.pack(">I", 600000) + bsalt + bnonce
wrap = hashlib.pbkdf2_hmac("sha256", password, bsalt, 600000, 32)
blob = header + AESGCM(wrap).encrypt(bnonce, b"not really a PKCS#8 key", header)
print("blob.pbkdf2.key =", wrap.hex())
print("blob.pbkdf2 =", blob.hex())

try:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # cryptography < 44
    Argon2id = None
if Argon2id is not None:
    aheader = b"sdpk" + b"\x01" + b"\x02" + struct.pack(">III", 19456, 2, 1) + bsalt + bnonce
    awrap = Argon2id(salt=bsalt, length=32, iterations=2, lanes=1, memory_cost=19456).derive(password)
    ablob = aheader + AESGCM(awrap).encrypt(bnonce, b"not really a PKCS#8 key", aheader)
    print("blob.argon2id.key =", awrap.hex())
    print("blob.argon2id =", ablob.hex())
