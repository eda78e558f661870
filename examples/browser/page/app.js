// The browser quick-start: what the page does, step by step, shown on the page.

import { GrpcError, GrpcWebClient, Status } from "./grpc-web.js";

const $ = (id) => document.getElementById(id);
const text = (s) => new TextEncoder().encode(s);
const untext = (b) => new TextDecoder().decode(b);

function show(list, line) {
  const li = document.createElement("li");
  li.textContent = line;
  $(list).appendChild(li);
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  show("steps", what);
}

/** A user: a token from the page's stand-in auth service, and a client. */
async function user(config, root, id) {
  const token = await (await fetch(`/token?user=${id}`)).text();
  return { id, client: new GrpcWebClient(config.server, root, () => token) };
}

/** An RSA-4096 key pair made in the browser; the public half as SPKI DER bytes. */
async function publicKey() {
  const pair = await crypto.subtle.generateKey(
    {
      name: "RSA-OAEP",
      modulusLength: 4096,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    false,
    ["encrypt", "decrypt"],
  );
  return new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
}

async function main() {
  const config = await (await fetch("/config.json")).json();
  // The schema, parsed in the page from the repository's proto file (field names kept
  // as written: key_data, not keyData). google/protobuf/timestamp.proto is bundled.
  const root = new protobuf.Root();
  await root.load("/proto/protocol/secret/v1/secret.proto", { keepCase: true });
  const first = 1 + Math.floor(Math.random() * 2 ** 30);
  const alice = await user(config, root, first);
  const bob = await user(config, root, first + 1);
  const A = alice.client;
  const B = bob.client;

  // 1. Keys.
  for (const who of [A, B]) {
    const r = await who.unary("PostKey", "PostKeyRequest", { key_data: await publicKey() }, "PostKeyResponse");
    check(r.fingerprint.length === 32, "PostKey: a key made with WebCrypto is accepted");
  }

  // 2. A pair and an invite (an opaque blob: real clients seal the room keys to Bob's key).
  const pair = await A.unary("GenerateChannelPair", "GenerateChannelPairRequest", {}, "ChannelPair");
  const sent = await A.unary(
    "SendInvite",
    "SendInviteRequest",
    { pair_id: pair.pair_id, user_id: String(bob.id), invite: text("sealed room keys") },
    "SendInviteResponse",
  );
  const inbox = await B.unary("FetchInvites", "FetchInvitesRequest", {}, "FetchInvitesResponse");
  check(inbox.invites.some((i) => i.invite_id === sent.invite_id), "Bob finds the invite");

  // 3. Bob subscribes: Subscribe is server-streaming, so it works over gRPC-Web.
  const stop = new AbortController();
  const events = B.serverStream(
    "Subscribe",
    "SubscribeRequest",
    { subscribe_to: [pair.message_id], invites_after: inbox.invites.at(-1).invite_id },
    "StreamMessagePostingResponse",
    stop.signal,
  );
  const caught = (await events.next()).value;
  check(caught.event === "caught_up", "Subscribe: CaughtUp, the subscription is live");

  // 4. Alice posts after Bob subscribed; the posts arrive on Bob's call.
  const bodies = ["hello from the browser", "second message"];
  for (const [i, body] of bodies.entries()) {
    const r = await A.unary(
      "PostMessage",
      "PostMessageRequest",
      { stream_id: pair.message_id, message: { message: text(body), id: String(i + 1) } },
      "PostMessageResponse",
    );
    check(r.event_id === String(i + 1), `PostMessage: event ${r.event_id}`);
  }
  for (const body of bodies) {
    const e = (await events.next()).value;
    check(e.event === "message" && untext(e.message.message.message) === body, `live: "${body}"`);
    show("live", `event ${e.message.event_id} from user ${e.message.sender}: ${body}`);
  }

  // 5. A reused counter: FAILED_PRECONDITION, the head counter in an exposed header.
  try {
    await A.unary(
      "PostMessage",
      "PostMessageRequest",
      { stream_id: pair.message_id, message: { message: text("reused"), id: "1" } },
      "PostMessageResponse",
    );
    throw new Error("a reused counter was accepted");
  } catch (err) {
    if (!(err instanceof GrpcError)) throw err;
    check(err.code === Status.FAILED_PRECONDITION, "a reused counter is FAILED_PRECONDITION");
    check(err.trailers["secretd-head-counter"] === "2", "head counter 2 read from secretd-head-counter");
  }

  // 6. History.
  const page = await B.unary(
    "FetchMessages",
    "FetchMessagesRequest",
    { stream_id: pair.message_id },
    "FetchMessagesResponse",
  );
  for (const m of page.messages) show("history", `event ${m.event_id}: ${untext(m.message.message)}`);
  check(page.messages.length === 2 && !page.has_more, "FetchMessages: the whole history");

  // Cancelling ends the subscription.
  stop.abort();
  await events.return?.();
}

main().then(
  () => {
    $("status").textContent = "PASS";
    $("status").className = "pass";
  },
  (err) => {
    console.error(err);
    $("status").textContent = `FAIL: ${err.message}`;
    $("status").className = "fail";
  },
);
