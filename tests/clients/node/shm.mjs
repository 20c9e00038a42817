// A frame's pixels from a camera's frame ring, read with pread and the seqlock procedure of contracts/README.md.
import { createHash } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { join } from "node:path";

const SEGMENT = /^edgesight\.[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}$/;
const MAGIC = Buffer.from("ESRING\0\x01", "latin1");
const HEADER_BYTES = 4096;
const SLOT_HEADER_BYTES = 64;
const BYTES_PER_PIXEL = { bgr24: 3, rgb24: 3, gray8: 1, nv12: 1 };

export class StaleFrame extends Error {}

function pread(fd, length, position) {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const got = readSync(fd, buffer, done, length - done, position + done);
    if (got === 0) throw new Error(`segment ends at ${position + done}, ${length - done} bytes short`);
    done += got;
  }
  return buffer;
}

export function readHeader(fd) {
  const header = pread(fd, 120, 0);
  if (!header.subarray(0, 8).equals(MAGIC)) throw new Error("not an EdgeSight frame ring (magic)");
  const layoutVersion = header.readUInt32LE(8);
  if (layoutVersion !== 1) throw new Error(`unknown layout version ${layoutVersion}`);
  return {
    layoutVersion,
    slots: header.readUInt32LE(12),
    capacity: Number(header.readBigUInt64LE(16)),
    slotStride: Number(header.readBigUInt64LE(24)),
    writerPid: Number(header.readBigUInt64LE(32)),
    writerStart: header.readBigUInt64LE(40),
    heartbeatNs: header.readBigUInt64LE(48),
    camera: header.subarray(56, 120).toString("utf8").replace(/\0+$/, ""),
  };
}

// The frame's pixels as packed rows (stride padding dropped), or StaleFrame when the writer reused the slot.
// `whileHeld` runs between the pixels and the second generation (a test's slow reader).
export function readFrame(shmDir, ref, whileHeld = () => {}) {
  if (!SEGMENT.test(ref.segment)) throw new Error(`not a segment name: ${ref.segment}`);
  // O_NOFOLLOW | O_NONBLOCK: a planted link or FIFO under the folder is refused, never followed or waited on
  const fd = openSync(join(shmDir, ref.segment), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    if (!fstatSync(fd).isFile()) throw new Error(`${ref.segment} is not a regular file`);
    const header = readHeader(fd);
    if (header.camera !== ref.camera) throw new Error(`${ref.segment} holds camera ${header.camera}, not ${ref.camera}`);
    const slot = Number(ref.slot);
    if (slot >= header.slots) throw new StaleFrame(`slot ${slot} outside ${header.slots} slots (ring recreated?)`);
    const offset = HEADER_BYTES + slot * header.slotStride;
    const width = Number(ref.width);
    const height = Number(ref.height);
    const stride = Number(ref.stride);
    const rows = ref.pixel_format === "nv12" ? (height * 3) / 2 : height;
    if (!(ref.pixel_format in BYTES_PER_PIXEL)) throw new Error(`unknown pixel format ${ref.pixel_format}`);
    const rowBytes = width * BYTES_PER_PIXEL[ref.pixel_format];
    if (rows * stride > header.capacity || rowBytes > stride) throw new Error("frame does not fit its slot");
    const generation = BigInt(ref.generation);
    const before = pread(fd, 8, offset).readBigUInt64LE(0);
    if (before !== generation) throw new StaleFrame(`generation ${before}, the reference says ${generation}`);
    const raw = pread(fd, rows * stride, offset + SLOT_HEADER_BYTES);
    whileHeld();
    const after = pread(fd, 8, offset).readBigUInt64LE(0);
    if (after !== generation) throw new StaleFrame(`overwritten while read (generation ${after})`);
    const pixels = Buffer.alloc(rows * rowBytes);
    for (let row = 0; row < rows; row += 1) raw.copy(pixels, row * rowBytes, row * stride, row * stride + rowBytes);
    return { header, pixels };
  } finally {
    closeSync(fd);
  }
}

export function summary(pixels) {
  let total = 0;
  for (const value of pixels) total += value;
  return { sha256: createHash("sha256").update(pixels).digest("hex"), mean: total / pixels.length };
}
