"""secretd quick-start for Python with grpcio.

Two users, Alice and Bob: keys, a channel pair, an invite, a live subscription, posts, a
counter refusal read from the trailers, and history. Exits non-zero on any failure.

Environment: SERVER_ADDR (default 127.0.0.1:50051) and SECRETD_JWT_SECRET (the server's
HS256 secret; this example signs its own development tokens with it, as the homeserver's
auth service would).
"""

import base64
import hashlib
import hmac
import json
import os
import random
import sys
import time
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ADDR = os.environ.get("SERVER_ADDR", "127.0.0.1:50051")
SECRET = os.environ.get("SECRETD_JWT_SECRET") or sys.exit(
    "set SECRETD_JWT_SECRET to the server's JWT secret"
)

# Stubs generated at run time from the repository's proto file (grpcio-tools compiles it
# on import; the well-known types come with grpcio-tools).
sys.path.insert(0, str(ROOT / "proto"))
pb, services = grpc.protos_and_services("protocol/secret/v1/secret.proto")


def token(user: int) -> str:
    """An HS256 JWT for `user`, valid for ten minutes (`sub` is the decimal user id)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": str(user), "exp": int(time.time()) + 600}).encode())
    body = f"{header}.{claims}"
    sig = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{b64(sig)}"


def auth(user: int):
    """Call metadata carrying the user's bearer token."""
    return (("authorization", f"Bearer {token(user)}"),)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"check failed: {what}")
    print(f"ok: {what}", flush=True)


def main() -> None:
    alice = random.randint(1, 2**31)
    bob = alice + 1
    # Plaintext for a local server; use grpc.secure_channel behind TLS.
    channel = grpc.insecure_channel(ADDR)
    stub = services.SecretServiceStub(channel)

    # 1. Keys: the public halves of RSA-4096 key pairs (the test fixtures here; a real
    #    device generates its own and keeps the private half).
    for user, n in ((alice, 1), (bob, 2)):
        pem = (ROOT / "tests" / "fixtures" / f"rsa4096_{n}.pub.pem").read_bytes()
        posted = stub.PostKey(pb.PostKeyRequest(key_data=pem), metadata=auth(user))
        check(len(posted.fingerprint) == 32, "PostKey returns a SHA-256 fingerprint")

    # 2. A channel pair, and an invite for Bob (an opaque blob: real clients encrypt the
    #    room keys to Bob's public key, see docs/e2ee.md).
    pair = stub.GenerateChannelPair(pb.GenerateChannelPairRequest(), metadata=auth(alice))
    invite = stub.SendInvite(
        pb.SendInviteRequest(
            pair_id=pair.pair_id, user_id=bob, invite=b"room keys, sealed to Bob's key"
        ),
        metadata=auth(alice),
    )
    inbox = stub.FetchInvites(pb.FetchInvitesRequest(), metadata=auth(bob))
    check(
        any(i.invite_id == invite.invite_id for i in inbox.invites),
        "Bob finds the invite",
    )

    # 3. Bob subscribes live: a server-streaming call is an iterator; cancel() ends it.
    sub = stub.Subscribe(
        pb.SubscribeRequest(
            subscribe_to=[pair.message_id], invites_after=inbox.invites[-1].invite_id
        ),
        metadata=auth(bob),
    )
    first = next(sub)
    check(first.WhichOneof("event") == "caught_up", "the subscription confirms with CaughtUp")

    # 4. Alice posts two messages (counters 1 and 2); Bob receives them live.
    for counter, text in ((1, b"hello Bob"), (2, b"second message")):
        r = stub.PostMessage(
            pb.PostMessageRequest(
                stream_id=pair.message_id,
                message=pb.EncryptedMessage(message=text, id=counter),
            ),
            metadata=auth(alice),
        )
        check(r.event_id == counter, f"post {counter} is event {r.event_id}")
    for expected in (b"hello Bob", b"second message"):
        e = next(sub)
        check(
            e.WhichOneof("event") == "message" and e.message.message.message == expected,
            f"Bob receives {expected.decode()!r} live",
        )

    # 5. A counter already used is refused; the remedy is in the trailers.
    try:
        stub.PostMessage(
            pb.PostMessageRequest(
                stream_id=pair.message_id,
                message=pb.EncryptedMessage(message=b"reused counter", id=1),
            ),
            metadata=auth(alice),
        )
        raise AssertionError("a reused counter was accepted")
    except grpc.RpcError as err:
        check(
            err.code() == grpc.StatusCode.FAILED_PRECONDITION,
            "a reused counter is FAILED_PRECONDITION",
        )
        trailers = dict(err.trailing_metadata())
        head = trailers.get("secretd-head-counter")
        check(head == "2", f"the trailer secretd-head-counter says {head}")

    # 6. History, paged until has_more is false.
    history, after = [], 0
    while True:
        page = stub.FetchMessages(
            pb.FetchMessagesRequest(stream_id=pair.message_id, after_event_id=after),
            metadata=auth(bob),
        )
        history.extend(page.messages)
        if not page.has_more:
            break
        after = page.messages[-1].event_id
    check(
        [m.message.message for m in history] == [b"hello Bob", b"second message"],
        "FetchMessages returns the history",
    )

    sub.cancel()  # cancelling ends a subscription
    channel.close()
    print("python example: PASS", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # noqa: BLE001 - the example reports any failure
        print(f"python example: FAIL: {err!r}", file=sys.stderr)
        sys.exit(1)
