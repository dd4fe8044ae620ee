"""The gRPC API: servicers (thin adapters) and the converters between protobuf and the domain.

Servicers convert a request, call the engine, storage or a shared server module, and convert the
reply. They never run analyses themselves (that is ``vigil.server.jobs``) and never decide who
may call (that is ``vigil.server.security``).
"""
