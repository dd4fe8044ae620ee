"""Active liveness: per-frame gesture signals from FaceMesh landmarks, and the gesture detectors."""
