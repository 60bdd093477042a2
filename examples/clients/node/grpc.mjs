// A Node client of rendezvous.v1.Sync over gRPC, with @grpc/grpc-js and the
// proto loaded at run time by @grpc/proto-loader (nothing generated): two
// callers pair and swap payloads, a lone caller with a deadline gets
// DEADLINE_EXCEEDED, a call cut off gets its answer by retrying with its
// attempt key, a caller that gives up withdraws its wait so that nobody is
// paired with it, and the server's health says SERVING.
//
//   node grpc.mjs 127.0.0.1:50051
//
// Exits non-zero, saying why, if anything is not as the proto documents it.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { service as healthService } from "grpc-health-check";

const target = process.argv[2] ?? "127.0.0.1:50051";
const protos = fileURLToPath(new URL("../../../proto", import.meta.url));
const definition = protoLoader.loadSync("rendezvous/v1/sync.proto", {
  includeDirs: [protos],
  // Enums by name, as the proto names them; bytes as Buffers.
  enums: String,
});
const { rendezvous } = grpc.loadPackageDefinition(definition);
const sync = new rendezvous.v1.Sync(target, grpc.credentials.createInsecure());

const deadline = (ms) => ({ deadline: new Date(Date.now() + ms) });
const wait = (id, payload, ms) =>
  new Promise((resolve, reject) =>
    sync.WaitForSecondParty({ id, payload: Buffer.from(payload) }, deadline(ms), (error, answer) =>
      error ? reject(error) : resolve(answer),
    ),
  );

// Two callers with one id: each gets the other's payload, one is first.
const id = `node-${randomUUID()}`;
const [a, b] = await Promise.all([wait(id, "from a", 10_000), wait(id, "from b", 10_000)]);
assert.equal(a.peerPayload.toString(), "from b");
assert.equal(b.peerPayload.toString(), "from a");
assert.deepEqual(new Set([a.role, b.role]), new Set(["ROLE_FIRST", "ROLE_SECOND"]));
console.log(`paired: ${a.role} and ${b.role}`);

// A caller alone, with a 300 ms deadline: DEADLINE_EXCEEDED (code 4).
const alone = await wait(`node-alone-${randomUUID()}`, "", 300).then(
  () => assert.fail("a lone caller was answered OK"),
  (error) => error,
);
assert.equal(alone.code, grpc.status.DEADLINE_EXCEEDED);
assert.equal(alone.code, 4);
console.log(`alone: DEADLINE_EXCEEDED: ${alone.details}`);

// A call cut off (cancelled here; a broken connection, in life) keeps its
// place for the server's --attempt-grace. Its retry, with the same request
// and so the same attemptKey, gets the answer decided meanwhile: make one
// key per wait, and send it on every try.
const retried = { id: `node-retried-${randomUUID()}`, payload: Buffer.from("from a"), attemptKey: randomUUID() };
const first = sync.WaitForSecondParty(retried, deadline(30_000), () => {});
await new Promise((resolve) => setTimeout(resolve, 200));
first.cancel();
const partner = await wait(retried.id, "from b", 10_000);
const again = await new Promise((resolve, reject) =>
  sync.WaitForSecondParty(retried, deadline(10_000), (error, answer) =>
    error ? reject(error) : resolve(answer),
  ),
);
assert.equal(partner.peerPayload.toString(), "from a");
assert.equal(again.peerPayload.toString(), "from b");
assert.deepEqual(new Set([again.role, partner.role]), new Set(["ROLE_FIRST", "ROLE_SECOND"]));
console.log(`retried: ${again.role}, with the partner's payload`);

// A caller that gives up (Ctrl-C, a cancelled job) withdraws its wait by its
// attemptKey: the place is taken out at once, through any replica, and nobody
// is paired with it. Only cancelling the call would leave the place held for
// the server's --attempt-grace, as a broken connection's is, and the next
// caller would be paired with a caller that has gone. In life, do this in a
// SIGINT/SIGTERM handler: process.once("SIGINT", giveUp).
const gaveUp = { id: `node-gave-up-${randomUUID()}`, payload: Buffer.from("from a"), attemptKey: randomUUID() };
const waiting = sync.WaitForSecondParty(gaveUp, deadline(30_000), () => {});
await new Promise((resolve) => setTimeout(resolve, 200));
waiting.cancel();
const withdrawn = await new Promise((resolve, reject) =>
  sync.Withdraw({ id: gaveUp.id, attemptKey: gaveUp.attemptKey }, deadline(2_000), (error, answer) =>
    error ? reject(error) : resolve(answer),
  ),
);
// WITHDRAWN: its place was taken out. UNKNOWN: it had not reached the server
// yet, and now never parks. TOO_LATE_MET would say it had paired.
assert.ok(["WITHDRAWAL_WITHDRAWN", "WITHDRAWAL_UNKNOWN"].includes(withdrawn.withdrawal), JSON.stringify(withdrawn));
const next = await wait(gaveUp.id, "from b", 300).then(
  () => assert.fail("the next caller was paired with one that gave up"),
  (error) => error,
);
assert.equal(next.code, grpc.status.DEADLINE_EXCEEDED);
console.log(`gave up: ${withdrawn.withdrawal}; the next caller waited alone`);

// Liveness ("") and readiness (rendezvous.v1.Sync), as probes ask.
const Health = grpc.makeGenericClientConstructor(healthService, "Health");
const health = new Health(target, grpc.credentials.createInsecure());
for (const service of ["", "rendezvous.v1.Sync"]) {
  const answer = await new Promise((resolve, reject) =>
    health.check({ service }, deadline(5_000), (error, answer) =>
      error ? reject(error) : resolve(answer),
    ),
  );
  assert.equal(answer.status, "SERVING", `${service}: ${JSON.stringify(answer)}`);
}
console.log("health: SERVING");

sync.close();
health.close();
console.log("node gRPC client: ok");
