// secretd quick-start for Node.js with @grpc/grpc-js and @grpc/proto-loader.
//
// Two users, Alice and Bob: keys, a channel pair, an invite, a live subscription, posts,
// a counter refusal read from the trailers, and history. Exits non-zero on any failure.
//
// Environment: SERVER_ADDR (default 127.0.0.1:50051) and SECRETD_JWT_SECRET (the
// server's HS256 secret; this example signs its own development tokens with it, as the
// homeserver's auth service would).

import { createHmac, generateKeyPairSync, randomInt } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = dirname(fileURLToPath(import.meta.url));
const addr = process.env.SERVER_ADDR ?? "127.0.0.1:50051";
const secret = process.env.SECRETD_JWT_SECRET;
if (!secret) throw new Error("set SECRETD_JWT_SECRET to the server's JWT secret");

// Generated at run time from the repository's proto file.
const definition = protoLoader.loadSync("protocol/secret/v1/secret.proto", {
  includeDirs: [join(here, "../../proto")],
  keepCase: true, // field names as in the .proto (key_data, not keyData)
  longs: String, // uint64 fields arrive as decimal strings: JS numbers lose digits past 2^53
  enums: String,
  defaults: true,
  oneofs: true, // `event` names which field of the oneof is set
});
const { SecretService } = grpc.loadPackageDefinition(definition).protocol.secret.v1;

/** An HS256 JWT for `user`, valid for ten minutes (`sub` is the decimal user id). */
function token(user) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({
    sub: String(user),
    exp: Math.floor(Date.now() / 1000) + 600,
  })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** A user's client: the stub and the `authorization` metadata every call carries. */
function clientFor(user) {
  // Plaintext for a local server; use grpc.credentials.createSsl() behind TLS. (grpc-js
  // refuses to attach call credentials to an insecure channel, so the token goes in the
  // metadata of each call.)
  const stub = new SecretService(addr, grpc.credentials.createInsecure());
  const metadata = () => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token(user)}`);
    return md;
  };
  return { stub, metadata };
}

/** Promise wrapper for a unary call. */
const call = (client, method, request) =>
  new Promise((resolve, reject) =>
    client.stub[method](request, client.metadata(), (err, response) =>
      err ? reject(err) : resolve(response),
    ),
  );

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

async function main() {
  // Small random ids keep runs apart; real ids come from your auth service.
  const alice = randomInt(1, 2 ** 31);
  const bob = alice + 1;
  const a = clientFor(alice);
  const b = clientFor(bob);

  // 1. Keys: each device makes an RSA-4096 key pair and posts the public half (SPKI DER).
  for (const client of [a, b]) {
    const { publicKey } = generateKeyPairSync("rsa", {
      modulusLength: 4096,
      publicExponent: 65537,
      publicKeyEncoding: { type: "spki", format: "der" },
      privateKeyEncoding: { type: "pkcs8", format: "pem" },
    });
    const posted = await call(client, "PostKey", { key_data: publicKey }); // bytes: a Buffer
    check(posted.fingerprint.length === 32, "PostKey returns a SHA-256 fingerprint");
  }

  // 2. A channel pair, and an invite for Bob (an opaque blob: real clients encrypt the
  //    room keys to Bob's public key, see docs/e2ee.md).
  const pair = await call(a, "GenerateChannelPair", {});
  const invite = await call(a, "SendInvite", {
    pair_id: pair.pair_id,
    user_id: String(bob),
    invite: Buffer.from("room keys, sealed to Bob's key"),
  });
  const inbox = await call(b, "FetchInvites", {});
  check(
    inbox.invites.some((i) => i.invite_id === invite.invite_id && i.pair.pair_id === pair.pair_id),
    "Bob finds the invite (ids are strings: longs: String)",
  );

  // 3. Bob subscribes live (server streaming; cancel() ends it).
  const sub = b.stub.Subscribe(
    { subscribe_to: [pair.message_id], invites_after: inbox.invites.at(-1).invite_id },
    b.metadata(),
  );
  const events = [];
  const waiters = [];
  sub.on("data", (r) => {
    events.push(r);
    waiters.splice(0).forEach((w) => w());
  });
  sub.on("error", (e) => {
    if (e.code !== grpc.status.CANCELLED) console.error("subscription ended:", e.message);
  });
  const next = async () => {
    while (events.length === 0) await new Promise((w) => waiters.push(w));
    return events.shift();
  };
  const caught = await next();
  check(caught.event === "caught_up", "the subscription confirms with CaughtUp");

  // 4. Alice posts two messages (counters 1 and 2); Bob receives them live.
  for (const [counter, text] of [[1, "hello Bob"], [2, "second message"]]) {
    const r = await call(a, "PostMessage", {
      stream_id: pair.message_id,
      message: { message: Buffer.from(text), id: String(counter) },
    });
    check(r.event_id === String(counter), `post ${counter} is event ${r.event_id}`);
  }
  for (const expected of ["hello Bob", "second message"]) {
    const e = await next();
    check(
      e.event === "message" && e.message.message.message.toString() === expected,
      `Bob receives "${expected}" live`,
    );
  }

  // 5. A counter already used is refused; the remedy is in the trailers.
  try {
    await call(a, "PostMessage", {
      stream_id: pair.message_id,
      message: { message: Buffer.from("reused counter"), id: "1" },
    });
    throw new Error("a reused counter was accepted");
  } catch (err) {
    check(err.code === grpc.status.FAILED_PRECONDITION, "a reused counter is FAILED_PRECONDITION");
    const head = err.metadata.get("secretd-head-counter")[0];
    check(head === "2", `the trailer secretd-head-counter says ${head}`);
  }

  // 6. History, paged until has_more is false.
  const history = [];
  let after = "0";
  for (;;) {
    const page = await call(b, "FetchMessages", {
      stream_id: pair.message_id,
      after_event_id: after,
    });
    history.push(...page.messages);
    if (!page.has_more) break;
    after = page.messages.at(-1).event_id;
  }
  check(history.length === 2 && history[1].message.message.toString() === "second message",
    "FetchMessages returns the history");

  sub.cancel(); // cancelling ends a subscription; half-closing would not
  a.stub.close();
  b.stub.close();
  console.log("node example: PASS");
}

main().catch((err) => {
  console.error("node example: FAIL:", err);
  process.exit(1);
});
