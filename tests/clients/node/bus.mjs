// The bus from Node.js: a subscriber that keeps what it hears, a publisher, and the acknowledged events path.
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Dealer, Publisher, Subscriber } from "zeromq";
import { message, topic, unpack } from "./wire.mjs";

const KEPT = 2000; // newest wins on the bus too: a bounded memory of what was heard

// Everything heard on the subscribed topics, decoded; bodies that break the contract are counted, not kept.
export class Inbox {
  constructor(endpoint, prefixes) {
    this.socket = new Subscriber({ receiveHighWaterMark: 1000 });
    this.socket.connect(endpoint);
    for (const prefix of prefixes) this.socket.subscribe(prefix);
    this.messages = [];
    this.first = 0; // absolute index of messages[0]
    this.rejected = 0;
    this.waiters = new Set();
    this.pump = this.run();
  }

  async run() {
    try {
      for await (const frames of this.socket) {
        if (frames.length !== 2) {
          this.rejected += 1;
          continue;
        }
        let body;
        try {
          body = unpack(frames[1]);
        } catch {
          this.rejected += 1;
          continue;
        }
        this.messages.push({ topic: frames[0].toString("ascii"), body });
        if (this.messages.length > KEPT) {
          this.messages.shift();
          this.first += 1;
        }
        for (const wake of this.waiters) wake();
      }
    } catch (error) {
      if (!this.socket.closed) throw error;
    }
  }

  subscribe(prefix) {
    this.socket.subscribe(prefix);
  }

  get end() {
    return this.first + this.messages.length;
  }

  // The first message at or after absolute index `from` that `accept` takes; rejects after `ms`.
  async find(accept, ms, from = this.first) {
    const giveUp = Date.now() + ms;
    let index = Math.max(from, this.first);
    for (;;) {
      for (; index < this.end; index += 1) {
        const item = this.messages[index - this.first];
        if (accept(item)) return { ...item, index };
      }
      const left = giveUp - Date.now();
      if (left <= 0) throw new Error(`nothing matched within ${ms} ms`);
      await new Promise((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.waiters.add(done);
      });
      index = Math.max(index, this.first);
    }
  }

  close() {
    this.socket.close();
  }
}

export function openPublisher(endpoint) {
  const socket = new Publisher({ sendHighWaterMark: 1000 });
  socket.connect(endpoint);
  return socket;
}

// A PUB drops what it sends before its connection and the subscriptions have reached it ("slow joiner"):
// probe on a topic no service hears until our own subscriber gets one back. Subscriptions made before
// ours (every running service's) have reached the publisher by then too.
export async function handshake(publisher, inbox, ms) {
  const key = `probe-${randomBytes(6).toString("hex")}`;
  const probeTopic = topic("control", key);
  inbox.subscribe(probeTopic);
  const from = inbox.end;
  const giveUp = Date.now() + ms;
  for (let sent = 1; Date.now() < giveUp; sent += 1) {
    const probe = { id: `${key}-${sent}`, command: "resume", instance: key, ts_ns: nowNs(), args: {} };
    await publisher.send([probeTopic, message("control", probe)]);
    try {
      await inbox.find((item) => item.topic === probeTopic.toString(), 200, from);
      return sent;
    } catch {
      // not yet through: probe again
    }
  }
  throw new Error(`no probe came back within ${ms} ms`);
}

export function nowNs() {
  return BigInt(Date.now()) * 1_000_000n;
}

// The acknowledged path: DEALER to the uplink's ROUTER, [topic, body] out, [acks/<receiver>/, ack] back.
export class EventsPath {
  constructor(endpoint) {
    this.socket = new Dealer({ receiveTimeout: 500, sendTimeout: 5000, linger: 0 });
    this.socket.connect(endpoint);
  }

  async sendRaw(frames) {
    await this.socket.send(frames);
  }

  // Sends `frames` and waits for the ack or refusal naming `id`, resending after `resendMs` (same id).
  async request(id, frames, ms, resendMs = 2000) {
    const giveUp = Date.now() + ms;
    let sentAt = 0;
    let sends = 0;
    while (Date.now() < giveUp) {
      if (Date.now() - sentAt >= resendMs) {
        await this.socket.send(frames);
        sentAt = Date.now();
        sends += 1;
      }
      let reply;
      try {
        reply = await this.socket.receive();
      } catch (error) {
        if (error.code === "EAGAIN") continue;
        throw error;
      }
      const answer = decodeAck(reply);
      const refused = answer.refused.find((item) => item.id === id);
      if (answer.ids.includes(id) || refused !== undefined) return { ...answer, sends, refusal: refused ?? null };
    }
    throw new Error(`no ack or refusal for ${id} within ${ms} ms`);
  }

  close() {
    this.socket.close();
  }
}

function decodeAck(frames) {
  if (frames.length !== 2) throw new Error(`an ack has 2 frames, got ${frames.length}`);
  const ackTopic = frames[0].toString("ascii");
  if (!/^acks\/[^/]+\/$/.test(ackTopic)) throw new Error(`not an acks topic: ${ackTopic}`);
  const body = unpack(frames[1], "ack");
  return { topic: ackTopic, receiver: body.receiver, ids: body.ids ?? [], refused: body.refused ?? [] };
}

export { sleep };
