// A gRPC-Web client of rendezvous.v1.Sync, as a browser page would call it:
// @connectrpc/connect-node's gRPC-Web transport over HTTP/1.1, with the
// descriptors protoc-gen-es generates from proto/ (npm run generate). Two
// callers pair and swap payloads, a lone caller with a deadline gets
// DEADLINE_EXCEEDED, and a CORS preflight from ORIGIN is allowed.
//
//   node grpc-web.mjs http://127.0.0.1:50051 https://app.example
//
// The server must run with --cors-allow-origin=ORIGIN.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

import { Role, Sync } from "./gen/rendezvous/v1/sync_pb.js";

const baseUrl = process.argv[2] ?? "http://127.0.0.1:50051";
const origin = process.argv[3] ?? "https://app.example";
const client = createClient(
  Sync,
  createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
);
const bytes = (text) => new TextEncoder().encode(text);
const text = (bytes) => new TextDecoder().decode(bytes);

// Two callers with one id: each gets the other's payload, one is first.
const id = `web-${randomUUID()}`;
const [a, b] = await Promise.all([
  client.waitForSecondParty({ id, payload: bytes("from a") }, { timeoutMs: 10_000 }),
  client.waitForSecondParty({ id, payload: bytes("from b") }, { timeoutMs: 10_000 }),
]);
assert.equal(text(a.peerPayload), "from b");
assert.equal(text(b.peerPayload), "from a");
assert.deepEqual(new Set([a.role, b.role]), new Set([Role.FIRST, Role.SECOND]));
console.log(`paired: ${Role[a.role]} and ${Role[b.role]}`);

// A caller alone, with a 300 ms deadline: DEADLINE_EXCEEDED (code 4).
const alone = await client
  .waitForSecondParty({ id: `web-alone-${randomUUID()}` }, { timeoutMs: 300 })
  .then(
    () => assert.fail("a lone caller was answered OK"),
    (error) => ConnectError.from(error),
  );
assert.equal(alone.code, Code.DeadlineExceeded);
assert.equal(alone.code, 4);
console.log(`alone: DEADLINE_EXCEEDED: ${alone.rawMessage}`);

// The preflight a browser on ORIGIN sends before its first call.
const preflight = await fetch(`${baseUrl}/rendezvous.v1.Sync/WaitForSecondParty`, {
  method: "OPTIONS",
  headers: {
    origin,
    "access-control-request-method": "POST",
    "access-control-request-headers": "content-type,x-grpc-web,x-user-agent,grpc-timeout",
  },
});
assert.equal(preflight.status, 200);
assert.equal(preflight.headers.get("access-control-allow-origin"), origin);
const allowed = preflight.headers.get("access-control-allow-headers");
for (const name of ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"]) {
  assert.ok(allowed.includes(name), `${name} not in ${allowed}`);
}
console.log(`preflight from ${origin}: allowed`);

// And none for an origin the server was not told of.
const other = await fetch(`${baseUrl}/rendezvous.v1.Sync/WaitForSecondParty`, {
  method: "OPTIONS",
  headers: { origin: "https://elsewhere.example", "access-control-request-method": "POST" },
});
assert.equal(other.headers.get("access-control-allow-origin"), null);
console.log("node gRPC-Web client: ok");
