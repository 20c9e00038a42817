// EdgeSight's bus wire format (contracts/README.md), protocol v1: topics, bodies, arrays.
import { decode, encode } from "@msgpack/msgpack";

export const VERSION = 1;
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
// 64-bit integers (nanoseconds, generations) pass 2^53: BigInt both ways, so they stay exact
const CODEC = { useBigInt64: true };

export function topic(stream, key) {
  if (!NAME.test(key) && key !== "*") throw new Error(`not a name: ${key}`);
  return Buffer.from(`${stream}/${key}/`, "ascii");
}

// A msgpack map whose keys are not strings (Detections.labels: int -> str). The library encodes a JS Map as
// an empty map, so such a map is written by hand: msgpack is concatenative (header, then key, value, ...).
export class IntKeys {
  constructor(entries) {
    this.entries = entries;
  }
}

function mapHeader(size) {
  if (size < 16) return Buffer.from([0x80 | size]);
  const header = Buffer.alloc(5);
  header[0] = 0xdf;
  header.writeUInt32BE(size, 1);
  return header;
}

function arrayHeader(size) {
  if (size < 16) return Buffer.from([0x90 | size]);
  const header = Buffer.alloc(5);
  header[0] = 0xdd;
  header.writeUInt32BE(size, 1);
  return header;
}

// The body as bytes: a map whose first two keys are type and v (senders put them first; see the README).
export function pack(value) {
  if (value instanceof IntKeys) {
    const parts = value.entries.flatMap(([key, item]) => [pack(key), pack(item)]);
    return Buffer.concat([mapHeader(value.entries.length), ...parts]);
  }
  const plain = value !== null && typeof value === "object" && value.constructor === Object;
  if (plain) {
    const entries = Object.entries(value).filter(([, item]) => item !== undefined);
    const parts = entries.flatMap(([key, item]) => [pack(key), pack(item)]);
    return Buffer.concat([mapHeader(entries.length), ...parts]);
  }
  if (Array.isArray(value)) {
    return Buffer.concat([arrayHeader(value.length), ...value.map(pack)]);
  }
  return Buffer.from(encode(value, CODEC));
}

export function message(type, fields) {
  return pack({ type, v: VERSION, ...fields });
}

// A received body: a map of a known type and v 1 (v absent means 1), else an Error (dropped by the caller).
export function unpack(body, expectedType) {
  const value = decode(body, CODEC);
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("body is not a map");
  const version = value.v === undefined || value.v === null ? 1 : Number(value.v);
  if (version !== VERSION) throw new Error(`unknown v ${value.v}`);
  if (expectedType !== undefined && value.type !== expectedType) throw new Error(`expected ${expectedType}, got ${value.type}`);
  return value;
}

// The Arrays rule: {dtype, shape, data} with data in C order, little-endian.
export function float32Array(rows, width) {
  const flat = rows.flat();
  const data = Buffer.alloc(flat.length * 4);
  flat.forEach((item, index) => data.writeFloatLE(item, index * 4));
  return { dtype: "<f4", shape: width === undefined ? [flat.length] : [rows.length, width], data };
}

export function int32Array(items) {
  const data = Buffer.alloc(items.length * 4);
  items.forEach((item, index) => data.writeInt32LE(item, index * 4));
  return { dtype: "<i4", shape: [items.length], data };
}

// JSON for the report: BigInt as a number when exact, bytes as their length.
export function toJson(value) {
  return JSON.stringify(value, (_, item) => {
    if (typeof item === "bigint") return Number.isSafeInteger(Number(item)) ? Number(item) : item.toString();
    if (item instanceof Uint8Array) return { bytes: item.length };
    return item;
  });
}
