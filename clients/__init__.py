"""vigil's Python SDK: blocking and asyncio clients with typed results."""

from clients.aio import AsyncVigilClient
from clients.errors import VigilRpcError
from clients.results import (
    DetectResult,
    Face,
    LivenessResult,
    Template,
    TemplateResult,
    VerifyResult,
)
from clients.sync import VigilClient
from clients.verdicts import Verdict, VerdictError, verify_verdict

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
