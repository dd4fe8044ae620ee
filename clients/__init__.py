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
from vigil.client.verdicts import Verdict, VerdictError, verify_verdict

__all__ = [
    "AsyncVigilClient",
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
    "verify_verdict",
]
