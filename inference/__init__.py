"""vigil's inference engine: media decoding, detection, alignment, models, batching, backends."""
