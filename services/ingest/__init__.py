"""Ingest: cameras in, decoded frames into shared memory, FrameRefs on the bus."""
