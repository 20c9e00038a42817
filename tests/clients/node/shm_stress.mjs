// The seqlock read under a writer at full speed (tests.integration.shm_writer: each frame is filled with
// seq * 7 % 251): a read the generations accept is never torn. Prints one JSON object: valid, stale, torn.
//   node shm_stress.mjs --frames ipc:///tmp/frames.sock --shm-dir /dev/shm/x --valid 100
import { parseArgs } from "node:util";
import { Subscriber } from "zeromq";
import { readFrame, StaleFrame } from "./shm.mjs";
import { toJson, unpack } from "./wire.mjs";

const { values: args } = parseArgs({
  options: {
    frames: { type: "string" },
    "shm-dir": { type: "string" },
    valid: { type: "string", default: "100" },
    "wait-s": { type: "string", default: "60" },
  },
});
const socket = new Subscriber({ receiveHighWaterMark: 4 });
socket.connect(args.frames);
socket.subscribe("frames/");
let newest = null;
const pump = (async () => {
  for await (const [, body] of socket) newest = unpack(body, "frame_ref");
})().catch(() => {});

function slowly() {
  if (Math.random() > 0.2) return;
  const until = performance.now() + Math.random() * 2; // a slow consumer, at times: the writer laps it
  while (performance.now() < until);
}

const counts = { valid: 0, stale: 0, torn: 0, examples: [] };
const giveUp = Date.now() + Number(args["wait-s"]) * 1000;
let last = null;
while (counts.valid < Number(args.valid) && Date.now() < giveUp) {
  await new Promise((resolve) => setImmediate(resolve)); // let the pump take what arrived
  if (newest === null || newest === last) continue;
  last = newest;
  try {
    const { pixels } = readFrame(args["shm-dir"], last, slowly);
    const expected = Number(BigInt(last.seq) % 251n) * 7 % 251;
    const wrong = pixels.findIndex((value) => value !== expected);
    counts.valid += 1;
    if (wrong >= 0) {
      counts.torn += 1;
      if (counts.examples.length < 5) counts.examples.push({ seq: last.seq, at: wrong, value: pixels[wrong], expected });
    }
  } catch (error) {
    if (!(error instanceof StaleFrame)) throw error;
    counts.stale += 1;
  }
}
process.stdout.write(`${toJson({ step: "shm_stress", ...counts })}\n`);
socket.close();
await pump;
