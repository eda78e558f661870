// The browser example's page server: a static site on its own origin (another port than
// secretd's, so every gRPC-Web call is cross-origin and goes through CORS), plus
// `/token?user=N`, a stand-in for the homeserver's auth service that signs development
// tokens with SECRETD_JWT_SECRET.
//
// Run: SERVER_ADDR=127.0.0.1:50051 SECRETD_JWT_SECRET=... node serve.mjs [port]

import { createHmac } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const protoRoot = join(here, "../../proto");
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".proto": "text/plain; charset=utf-8",
};

/** An HS256 JWT for `user`, valid for ten minutes. */
function token(secret, user) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({
    sub: String(user),
    exp: Math.floor(Date.now() / 1000) + 600,
  })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** The file a path names, or null (no way out of the page and proto folders). */
function fileFor(path) {
  if (path === "/") return join(here, "page/index.html");
  if (path === "/vendor/protobuf.min.js")
    return join(here, "node_modules/protobufjs/dist/protobuf.min.js");
  const safe = normalize(path).replace(/^(\.\.[/\\])+/, "");
  if (safe.startsWith("/proto/")) return join(protoRoot, safe.slice("/proto/".length));
  if (/^\/[a-z-]+\.js$/.test(safe)) return join(here, "page", safe);
  return null;
}

/** Starts the page server on 127.0.0.1:`port` (0 = any free port); resolves to its URL. */
export function start({ port = 8080, addr, secret }) {
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://page");
    try {
      if (url.pathname === "/config.json") {
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify({ server: `http://${addr}` }));
      }
      if (url.pathname === "/token") {
        const user = Number(url.searchParams.get("user"));
        if (!Number.isSafeInteger(user) || user < 1) throw new Error("bad user");
        res.writeHead(200, { "content-type": "text/plain" });
        return res.end(token(secret, user));
      }
      const file = fileFor(url.pathname);
      if (!file) throw new Error("not found");
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve) =>
    server.listen(port, "127.0.0.1", () =>
      resolve({ server, url: `http://127.0.0.1:${server.address().port}` }),
    ),
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const secret = process.env.SECRETD_JWT_SECRET;
  if (!secret) throw new Error("set SECRETD_JWT_SECRET to the server's JWT secret");
  const { url } = await start({
    port: Number(process.argv[2] ?? process.env.PAGE_PORT ?? 8080),
    addr: process.env.SERVER_ADDR ?? "127.0.0.1:50051",
    secret,
  });
  console.log(`open ${url} (secretd must allow this origin: cors_allowed_origins)`);
}
