"""vigil's Web SDK: the Web Adapter (an ASGI app the browser talks to, which talks to vigil's gRPC
service through the client SDK with a credential it never hands out) and the Web Plugin (one
JavaScript module it serves) plus a demo page."""
