"""vigil's inference engine: media decoding, detection, alignment, models, batching, backends,
the decisions (live, match) and video liveness (``video``)."""
