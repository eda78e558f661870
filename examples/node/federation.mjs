// secretd federation walk-through for Node.js: two homeservers, a.test and b.test, each
// with its own secretd; a user of a invites a user of b into a pair on a, and both post
// and receive each other's events live (DESIGN §9, README "Federation").
//
// Alice is a user of a, Bob a user of b. Bob never gets a token from a: his own
// homeserver b mints him a federation token for a (Federate), and a checks it against
// the key it pinned for b. Exits non-zero on any failure.
//
// Environment: A_ADDR, B_ADDR (host:port of a's and b's secretd), A_JWT_SECRET and
// B_JWT_SECRET (each server's HS256 secret: this example signs development tokens for
// its users with them, as each homeserver's auth service would), A_NAME / B_NAME (the
// server names, default a.test / b.test), CA_FILE (when the servers serve TLS: the PEM
// certificate of the CA that signed theirs; unset = plaintext). examples/federation/run
// starts two servers over TLS and runs this.

import { createHmac, createHash, generateKeyPairSync, randomInt } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = dirname(fileURLToPath(import.meta.url));
const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name} (see the comment at the top of this file)`);
  return value;
};
const A = { addr: need("A_ADDR"), secret: need("A_JWT_SECRET"), name: process.env.A_NAME ?? "a.test" };
const B = { addr: need("B_ADDR"), secret: need("B_JWT_SECRET"), name: process.env.B_NAME ?? "b.test" };

const definition = protoLoader.loadSync("protocol/secret/v1/secret.proto", {
  includeDirs: [join(here, "../../proto")],
  keepCase: true,
  longs: String, // uint64 fields arrive as decimal strings
  enums: String,
  defaults: true,
  oneofs: true,
});
const { SecretService } = grpc.loadPackageDefinition(definition).protocol.secret.v1;

/** An HS256 JWT for a local `user` of `server`, valid for ten minutes. */
function localToken(server, user) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({
    sub: String(user),
    exp: Math.floor(Date.now() / 1000) + 600,
  })}`;
  return `${body}.${createHmac("sha256", server.secret).update(body).digest("base64url")}`;
}

/** TLS trusting the CA of CA_FILE when it is set, else plaintext. */
const channelCredentials = process.env.CA_FILE
  ? grpc.credentials.createSsl(readFileSync(process.env.CA_FILE))
  : grpc.credentials.createInsecure();

/** A client of `server`'s SecretService presenting `token` on every call. */
function clientAt(server, token) {
  const stub = new SecretService(server.addr, channelCredentials);
  const metadata = () => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    return md;
  };
  return { stub, metadata };
}

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

/** A live subscription (Subscribe) with a `next()` that waits for the next frame. */
function subscribe(client, request) {
  const call = client.stub.Subscribe(request, client.metadata());
  const frames = [];
  const waiters = [];
  call.on("data", (r) => {
    frames.push(r);
    waiters.splice(0).forEach((w) => w());
  });
  call.on("error", (e) => {
    if (e.code !== grpc.status.CANCELLED) console.error("subscription ended:", e.message);
  });
  const next = async (what) => {
    const deadline = Date.now() + 10_000;
    while (frames.length === 0) {
      if (Date.now() > deadline) throw new Error(`nothing arrived within 10 s: ${what}`);
      await new Promise((w) => {
        waiters.push(w);
        setTimeout(w, 200);
      });
    }
    return frames.shift();
  };
  return { call, next };
}

async function main() {
  const alice = randomInt(1, 2 ** 31); // a user of a
  const bob = randomInt(1, 2 ** 31); // a user of b
  const aliceAtA = clientAt(A, localToken(A, alice));
  const bobAtB = clientAt(B, localToken(B, bob));

  // 1. Bob's device posts his public key on his own homeserver b.
  const { publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 4096,
    publicKeyEncoding: { type: "spki", format: "der" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  await call(bobAtB, "PostKey", { key_data: publicKey });
  // Bob waits for invites on b, live, before anyone invites him.
  const bobInbox = subscribe(bobAtB, { invites_after: "0" });

  // 2. Alice creates a pair on a and fetches Bob's key through a (a asks b).
  const pair = await call(aliceAtA, "GenerateChannelPair", {});
  const keys = await call(aliceAtA, "FetchKey", { user_id: String(bob), homeserver: B.name });
  const fingerprint = createHash("sha256").update(keys.current_key.key_data).digest();
  check(fingerprint.equals(keys.current_key.fingerprint), `a serves the key of user ${bob}@${B.name}`);

  // 3. Alice invites Bob (a real client seals the room keys to his key: docs/e2ee.md);
  //    a delivers the invite to b, which puts it in Bob's inbox and pushes it live.
  const sent = await call(aliceAtA, "SendInvite", {
    pair_id: pair.pair_id,
    user_id: String(bob),
    homeserver: B.name,
    invite: Buffer.from("room keys, sealed to Bob's key"),
    key_fingerprint: keys.current_key.fingerprint,
  });
  let frame = await bobInbox.next("the invite on b");
  while (frame.event !== "invite") frame = await bobInbox.next("the invite on b");
  const invite = frame.invite;
  check(
    invite.invite_id === sent.invite_id &&
      invite.pair.pair_id === pair.pair_id &&
      invite.pair_homeserver === A.name &&
      invite.from_homeserver === A.name &&
      invite.from_user === String(alice),
    `Bob receives the invite live on b: pair on ${invite.pair_homeserver}, from ${invite.from_user}@${invite.from_homeserver}`,
  );
  bobInbox.call.cancel();

  // 4. Bob asks b for a federation token for a, and uses the pair on a with it.
  const federated = await call(bobAtB, "Federate", { server_id: A.name });
  const bobAtA = clientAt(A, federated.token);
  const listed = await call(bobAtA, "ListChannelPairs", {});
  const info = listed.pairs.find((p) => p.pair.pair_id === pair.pair_id);
  check(
    info && info.member_refs.some((m) => m.homeserver === B.name && m.user_id === String(bob)),
    `a lists Bob as member ${bob}@${B.name} of Alice's pair`,
  );

  // 5. Both subscribe to the message stream on a; each posts, the other receives live.
  const aliceSub = subscribe(aliceAtA, { subscribe_to: [pair.message_id] });
  const bobSub = subscribe(bobAtA, { subscribe_to: [pair.message_id] });
  for (const sub of [aliceSub, bobSub]) {
    check((await sub.next("CaughtUp")).event === "caught_up", "a subscription on a is live");
  }
  await call(aliceAtA, "PostMessage", {
    stream_id: pair.message_id,
    message: { message: Buffer.from("hello Bob, from a"), id: "1" },
  });
  await call(bobAtA, "PostMessage", {
    stream_id: pair.message_id,
    message: { message: Buffer.from("hello Alice, from b"), id: "2" },
  });
  for (const [who, sub] of [["Alice", aliceSub], ["Bob", bobSub]]) {
    const got = [];
    for (let i = 0; i < 2; i++) {
      const e = await sub.next(`${who}'s events`);
      const m = e.message;
      got.push(`${m.message.message.toString()} (sender ${m.sender}@${m.sender_homeserver || A.name})`);
    }
    check(
      got[0] === `hello Bob, from a (sender ${alice}@${A.name})` &&
        got[1] === `hello Alice, from b (sender ${bob}@${B.name})`,
      `${who} receives both posts live, in order: ${got.join("; ")}`,
    );
  }

  // 6. What belongs to Bob's own homeserver is refused at a, naming b.
  try {
    await call(bobAtA, "GenerateChannelPair", {});
    throw new Error("a let a user of b create a pair");
  } catch (err) {
    check(
      err.code === grpc.status.PERMISSION_DENIED && err.details.includes(B.name),
      "GenerateChannelPair at a by a user of b is PERMISSION_DENIED naming b",
    );
  }

  aliceSub.call.cancel();
  bobSub.call.cancel();
  for (const c of [aliceAtA, bobAtB, bobAtA]) c.stub.close();
  console.log("federation walk-through: PASS");
}

main().catch((err) => {
  console.error("federation walk-through: FAIL:", err);
  process.exit(1);
});
