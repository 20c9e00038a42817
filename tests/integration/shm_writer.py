"""A frame writer in its own process, for the shm tests: ``python -m tests.integration.shm_writer ...``.

Every frame is filled with one value derived from its seq, so a torn read (two frames mixed)
shows up as a frame that is not uniform. FrameRefs go out on a real PUB socket.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import numpy as np
import zmq

from common.shm import FrameRingWriter, frame_bytes
from contracts import encode, topic


def fill_value(seq: int) -> int:
    return seq * 7 % 251


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--site", default="test")
    parser.add_argument("--camera", default="cam")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--publish", required=True, help="pub+bind address")
    parser.add_argument("--fps", type=float, default=0.0, help="0: as fast as possible")
    args = parser.parse_args()
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 4)
    pub.bind(args.publish)
    frames = [np.full((args.height, args.width, 3), fill_value(i), np.uint8) for i in range(251)]
    capacity = frame_bytes("bgr24", args.width, args.height)
    with FrameRingWriter.create(args.site, args.camera, slots=args.slots, capacity=capacity, shm_dir=args.dir) as ring:
        print("ready", flush=True)
        seq = 0
        while not stop:
            ref = ring.write(frames[seq % 251])
            pub.send_multipart([topic("frames", args.camera), encode(ref)])
            seq += 1
            if args.fps:
                time.sleep(1 / args.fps)
    pub.close(linger=0)
    context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
