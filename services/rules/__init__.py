"""Rules: Detections in, tracked objects, counts and events out (to the uplink, acknowledged)."""
