"""Who calls and what they may do: authentication, permissions, SAFE redaction, signed tokens,
TLS and rate limits. Nothing here knows about servicers or jobs."""
