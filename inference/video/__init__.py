"""Video liveness: decoding with limits, frame sampling, per-frame analysis, signals (replay,
capture, identity), the live stream's session, and the video verdict."""
