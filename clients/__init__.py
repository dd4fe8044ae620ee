"""vigil's Python SDK: blocking and asyncio clients with typed results."""

from vigil.client.aio import AsyncVigilClient
from vigil.client.errors import VigilRpcError
from vigil.client.results import (
    DetectResult,
    Face,
    LivenessResult,
    Template,
    TemplateResult,
    VerifyResult,
)
from vigil.client.sync import VigilClient
from vigil.client.verdicts import (
    ChallengeVerdictClaims,
    Verdict,
    VerdictError,
    verify_challenge_verdict,
    verify_verdict,
)
from vigil.client.webhooks import WebhookSignatureError, verify_delivery

__all__ = [
    "AsyncVigilClient",
    "ChallengeVerdictClaims",
    "DetectResult",
    "Face",
    "LivenessResult",
    "Template",
    "TemplateResult",
    "Verdict",
    "VerdictError",
    "VerifyResult",
    "VigilClient",
    "VigilRpcError",
    "WebhookSignatureError",
    "verify_challenge_verdict",
    "verify_delivery",
    "verify_verdict",
]
