// An integrator's client of a running EdgeSight site, written from contracts/README.md alone.
// Prints one JSON object per step on stdout ({"step": ..., ...} or {"step": ..., "error": ...}); exit 1 on any error.
//
//   node main.mjs --subscribe ipc:///run/edgesight/bus-out.sock --publish ipc:///run/edgesight/bus-in.sock \
//     --events ipc:///run/edgesight/events.sock --shm-dir /dev/shm --site dock7 --camera gate \
//     --line-rule door --external-rule manual --model node-detector
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { EventsPath, Inbox, handshake, nowNs, openPublisher } from "./bus.mjs";
import { readFrame, StaleFrame, summary } from "./shm.mjs";
import { IntKeys, float32Array, int32Array, message, toJson, topic } from "./wire.mjs";

const { values: args } = parseArgs({
  options: {
    subscribe: { type: "string" },
    publish: { type: "string" },
    events: { type: "string" },
    "shm-dir": { type: "string", default: "/dev/shm" },
    site: { type: "string" },
    camera: { type: "string" },
    "line-rule": { type: "string" },
    "external-rule": { type: "string" },
    model: { type: "string", default: "node-detector" },
    "wait-s": { type: "string", default: "30" },
  },
});
for (const required of ["subscribe", "publish", "events", "site", "camera", "line-rule", "external-rule"]) {
  if (args[required] === undefined) throw new Error(`--${required} is required`);
}
const WAIT_MS = Number(args["wait-s"]) * 1000;
const camera = args.camera;
const framesTopic = topic("frames", camera).toString();
const isFrame = (item) => item.topic === framesTopic && item.body.type === "frame_ref";

function report(step, fields) {
  process.stdout.write(`${toJson({ step, ...fields })}\n`);
}

async function subscribed(inbox) {
  const frame = await inbox.find(isFrame, WAIT_MS);
  await inbox.find((item) => item.topic.startsWith("health/") && item.body.type === "health", WAIT_MS);
  await new Promise((resolve) => setTimeout(resolve, 1500)); // every service's next health (interval < 1.5 s)
  const services = new Set();
  for (const item of inbox.messages) if (item.body.type === "health") services.add(item.body.service);
  const { seq, segment, slot, generation, width, height, stride, pixel_format } = frame.body;
  return { frame: { seq, segment, slot, generation, width, height, stride, pixel_format }, health: [...services].sort(), rejected: inbox.rejected };
}

// Three frames read whole, each checked against its generation before and after (the seqlock).
async function sharedMemory(inbox) {
  const frames = [];
  let stale = 0;
  let header;
  let from = inbox.end;
  while (frames.length < 3) {
    const { body: ref, index } = await inbox.find(isFrame, WAIT_MS, from);
    from = index + 1;
    try {
      const read = readFrame(args["shm-dir"], ref);
      header = read.header;
      frames.push({ seq: ref.seq, slot: ref.slot, generation: ref.generation, ...summary(read.pixels) });
    } catch (error) {
      if (!(error instanceof StaleFrame)) throw error;
      stale += 1; // the writer lapped the ring before we read: a reader takes the next frame
      if (stale > 20) throw new Error(`20 stale reads: ${error.message}`);
    }
  }
  return { frames, stale, header };
}

function detections(ref, boxes) {
  return message("detections", {
    frame: ref,
    model: args.model,
    model_version: "1",
    boxes: float32Array(boxes, 4),
    class_ids: int32Array(boxes.map(() => 0)),
    scores: float32Array(boxes.map(() => 0.9)),
    labels: new IntKeys(boxes.length ? [[0, "person"]] : []),
    labels_ref: `${args.model}@1`,
    timing: { preprocess_ns: 0, inference_ns: 1000, postprocess_ns: 0, batch_size: 1, backend: "node", provider: "cpu" },
  });
}

// An external detector: a person walks down across the line on the site's own frames, then leaves.
async function detector(inbox) {
  const publisher = openPublisher(args.publish);
  const probes = await handshake(publisher, inbox, WAIT_MS);
  const detectionsTopic = topic("detections", camera);
  let from = inbox.end;
  for (let step = 0; step <= 12; step += 1) {
    const { body: ref, index } = await inbox.find(isFrame, WAIT_MS, from);
    from = index + 1;
    const y = 0.3 + step * 0.05;
    const boxes = step < 12 ? [[0.45, y - 0.2, 0.55, y]] : [];
    await publisher.send([detectionsTopic, detections(ref, boxes)]);
  }
  const sceneTopic = topic("scene", camera).toString();
  const line = args["line-rule"];
  const scene = await inbox.find(
    (item) => item.topic === sceneTopic && item.body.model === args.model && item.body.lines?.[line]?.person?.in >= 1,
    WAIT_MS,
  );
  publisher.close();
  return { probes, model: scene.body.model, lines: scene.body.lines[line] };
}

function event(id, fields = {}) {
  const body = {
    id,
    event_type: "node_alert",
    lifecycle: "new",
    site: args.site,
    camera,
    rule: args["external-rule"],
    ts_ns: nowNs(),
    counts: {},
    attributes: { source: args.model },
    ...fields,
  };
  return [topic("events", camera), message("event", body)];
}

async function acknowledged() {
  const path = new EventsPath(args.events);
  // an external rule's event ids start with the rule's name and a colon; the rest is ours
  const prefix = `${args["external-rule"]}:node-${randomBytes(4).toString("hex")}`;
  const steps = [];
  const run = async (step, work) => {
    try {
      steps.push([step, await work()]);
    } catch (error) {
      steps.push([step, { error: error.message }]);
    }
  };
  const first = event(`${prefix}-1`);
  const answer = (reply) => ({ topic: reply.topic, receiver: reply.receiver, ids: reply.ids, refusal: reply.refusal, sends: reply.sends });
  await run("ack", async () => ({ id: `${prefix}-1`, ...answer(await path.request(`${prefix}-1`, first, WAIT_MS)) }));
  const elsewhere = event(`${prefix}-2`, { site: `not-${args.site}` });
  await run("refused", async () => ({ id: `${prefix}-2`, ...answer(await path.request(`${prefix}-2`, elsewhere, WAIT_MS)) }));
  await run("duplicate", async () => ({ id: `${prefix}-1`, ...answer(await path.request(`${prefix}-1`, first, WAIT_MS)) }));
  // an attacker's bodies: one with an id but no other field, then three with no id to answer
  const bare = [topic("events", camera), message("event", { id: `${prefix}-3` })];
  await run("invalid", async () => ({ id: `${prefix}-3`, ...answer(await path.request(`${prefix}-3`, bare, WAIT_MS)) }));
  await run("malformed", async () => {
    await path.sendRaw([topic("events", camera), Buffer.from([0xc1])]); // 0xc1: never valid msgpack
    await path.sendRaw([topic("events", camera), message("event", { event_type: "node_alert" })]);
    await path.sendRaw([Buffer.from("only one frame")]);
    const next = await path.request(`${prefix}-4`, event(`${prefix}-4`), WAIT_MS);
    return { id: `${prefix}-4`, sent: 3, ...answer(next) };
  });
  // an id that is not the rule's own (no "<rule>:" in front): refused, never stored
  const foreign = `node-${randomBytes(4).toString("hex")}-5`;
  await run("foreign_id", async () => ({ id: foreign, ...answer(await path.request(foreign, event(foreign), WAIT_MS)) }));
  path.close();
  return steps;
}

async function main() {
  const inbox = new Inbox(args.subscribe, [framesTopic, "health/", topic("scene", camera)]);
  let failed = false;
  const attempt = async (step, work) => {
    try {
      report(step, await work());
    } catch (error) {
      failed = true;
      report(step, { error: `${error.message}` });
    }
  };
  await attempt("subscribe", () => subscribed(inbox));
  await attempt("shm", () => sharedMemory(inbox));
  await attempt("count", () => detector(inbox));
  for (const [step, fields] of await acknowledged()) {
    failed ||= fields.error !== undefined;
    report(step, fields);
  }
  inbox.close();
  process.exit(failed ? 1 : 0);
}

await main();
