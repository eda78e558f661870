// A small gRPC-Web client over fetch(): binary frames (application/grpc-web+proto),
// unary and server-streaming calls (what gRPC-Web supports: browsers cannot stream a
// request body over HTTP/1.1), messages encoded and decoded with protobufjs.
//
// Wire format: each message is a frame of 1 flag byte, a 4-byte big-endian length and
// the bytes; the trailers come last as a frame with flag 0x80 holding "key: value\r\n"
// lines. An error answered before any message ("trailers-only") has grpc-status in the
// response headers instead: the page can read those only because the server lists them
// in Access-Control-Expose-Headers.

/** A failed call: the gRPC status code, its message and the trailers (lower-case keys). */
export class GrpcError extends Error {
  constructor(code, message, trailers) {
    super(`gRPC status ${code}: ${message}`);
    this.code = code;
    this.grpcMessage = message;
    this.trailers = trailers;
  }
}

/** gRPC status codes used by the page. */
export const Status = { OK: 0, CANCELLED: 1, FAILED_PRECONDITION: 9 };

const toObject = {
  longs: String, // uint64 as decimal strings: JS numbers lose digits past 2^53
  bytes: Uint8Array, // bytes fields are Uint8Arrays both ways
  defaults: true,
  oneofs: true, // `event` names which field of the oneof is set
};

export class GrpcWebClient {
  /**
   * @param {string} base the server, e.g. http://127.0.0.1:50051
   * @param {object} root the protobufjs Root of secret.proto
   * @param {() => string} token returns the caller's bearer token
   */
  constructor(base, root, token) {
    this.base = base;
    this.root = root;
    this.token = token;
    this.service = "protocol.secret.v1.SecretService";
  }

  async #post(method, requestType, request, signal) {
    const type = this.root.lookupType(`protocol.secret.v1.${requestType}`);
    const bytes = type.encode(type.fromObject(request)).finish();
    const body = new Uint8Array(5 + bytes.length);
    new DataView(body.buffer).setUint32(1, bytes.length);
    body.set(bytes, 5);
    const response = await fetch(`${this.base}/${this.service}/${method}`, {
      method: "POST",
      headers: {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "x-user-agent": "secretd-example-browser/1",
        authorization: `Bearer ${this.token()}`,
      },
      body,
      signal,
    });
    if (!response.ok) throw new Error(`HTTP ${response.status} from ${method}`);
    // Trailers-only answer: the status is in the headers.
    const status = response.headers.get("grpc-status");
    if (status !== null && status !== "0") {
      const trailers = {};
      response.headers.forEach((v, k) => (trailers[k] = v));
      await response.body?.cancel();
      throw new GrpcError(Number(status), decodeMessage(response.headers.get("grpc-message")), trailers);
    }
    return response;
  }

  /** Yields the decoded messages of a response as they arrive; checks the trailers. */
  async *#messages(response, responseType) {
    const type = this.root.lookupType(`protocol.secret.v1.${responseType}`);
    const reader = response.body.getReader();
    let buffer = new Uint8Array(0);
    let trailers = null;
    for (;;) {
      while (buffer.length >= 5) {
        const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
        if (buffer.length < 5 + length) break;
        const payload = buffer.slice(5, 5 + length);
        const flag = buffer[0];
        buffer = buffer.slice(5 + length);
        if (flag & 0x80) {
          trailers = parseTrailers(new TextDecoder().decode(payload));
        } else {
          yield type.toObject(type.decode(payload), toObject);
        }
      }
      const { value, done } = await reader.read();
      if (done) break;
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer);
      joined.set(value, buffer.length);
      buffer = joined;
    }
    const status = Number(trailers?.["grpc-status"] ?? NaN);
    if (status !== Status.OK) {
      throw new GrpcError(
        Number.isNaN(status) ? 2 : status,
        decodeMessage(trailers?.["grpc-message"] ?? "the call ended without a status"),
        trailers ?? {},
      );
    }
  }

  /** A unary call: resolves to the decoded response or rejects with a GrpcError. */
  async unary(method, requestType, request, responseType) {
    const response = await this.#post(method, requestType, request);
    let result = null;
    for await (const m of this.#messages(response, responseType)) result = m;
    return result;
  }

  /**
   * A server-streaming call: an async iterator of decoded responses. Stop it with
   * `signal` (an AbortController's): cancelling is what ends a subscription.
   */
  async *serverStream(method, requestType, request, responseType, signal) {
    const response = await this.#post(method, requestType, request, signal);
    yield* this.#messages(response, responseType);
  }
}

function parseTrailers(text) {
  const out = {};
  for (const line of text.split("\r\n")) {
    const i = line.indexOf(":");
    if (i > 0) out[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return out;
}

/** grpc-message is percent-encoded. */
function decodeMessage(m) {
  try {
    return decodeURIComponent(m ?? "");
  } catch {
    return m ?? "";
  }
}
