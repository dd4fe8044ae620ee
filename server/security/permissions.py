"""Who may call what: one table, RPC → roles allowed, and whether a SAFE credential may call it.

Methods missing from the table are refused (deny by default); a test checks that every RPC of
every vigil service is listed. Company isolation is not here: repositories scope every query to
the caller's company (ADMIN and OPERATOR may name another with the `vigil-company` metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN, OPERATOR, CLIENT = "ADMIN", "OPERATOR", "CLIENT"
CLIENT_ADMIN, CLIENT_OPERATOR, SERVICE = "CLIENT_ADMIN", "CLIENT_OPERATOR", "SERVICE"
ROLES = (ADMIN, OPERATOR, CLIENT, CLIENT_ADMIN, CLIENT_OPERATOR, SERVICE)

#: Roles that act across companies (by naming one in the call metadata).
STAFF = frozenset({ADMIN, OPERATOR})

EVERYONE = frozenset(ROLES)
READERS = EVERYONE
WRITERS = frozenset({ADMIN, CLIENT, CLIENT_ADMIN, SERVICE})
MANAGERS = frozenset({ADMIN, CLIENT_ADMIN, SERVICE})
DECIDERS = frozenset({ADMIN, OPERATOR, CLIENT_OPERATOR})
ACCOUNT_ADMINS = frozenset({ADMIN, CLIENT_ADMIN})
ONLY_ADMIN = frozenset({ADMIN})

#: RPCs that need no credential: they are how a person gets one.
PUBLIC = frozenset({"/vigil.v1.Auth/Login", "/vigil.v1.Auth/Refresh"})
#: Standard services open to every caller (probes, grpcurl).
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    #: May a credential bound to SAFE results call it? (No for RPCs whose answer is biometric.)
    safe: bool = True


def _rules(service: str, roles: frozenset[str], methods: str, safe: bool = True) -> dict[str, Rule]:
    return {f"/vigil.v1.{service}/{m}": Rule(roles, safe) for m in methods.split()}


PERMISSIONS: dict[str, Rule] = {
    **_rules("Instant", WRITERS, "CheckLiveness Verify StreamLiveness"),
    **_rules("Instant", WRITERS, "Detect ExtractTemplate", safe=False),
    **_rules("Instant", EVERYONE, "GetServerInfo"),
    **_rules("Folders", WRITERS, "CreateFolder UpdateFolderMeta UploadMedia CreateAnalyses Submit"),
    **_rules("Folders", MANAGERS, "DeleteFolder DeleteMedia"),
    **_rules(
        "Folders", READERS, "GetFolder ListFolders GetMedia GetAnalysis ListAnalyses WatchFolder"
    ),
    **_rules("Folders", READERS, "DownloadMedia", safe=False),
    **_rules(
        "Collections", MANAGERS, "CreateCollection DeleteCollection AddFace RemoveFace", safe=False
    ),
    **_rules("Collections", READERS - {CLIENT}, "ListCollections ListFaces", safe=False),
    **_rules("Collections", WRITERS, "Search", safe=False),
    **_rules("Webhooks", MANAGERS, "CreateWebhook DeleteWebhook"),
    **_rules("Webhooks", READERS - {CLIENT}, "ListWebhooks ListDeliveries"),
    # counts only, no biometric data: SAFE people may read them
    **_rules("Statistics", ACCOUNT_ADMINS | DECIDERS, "GetStatistics"),
    **_rules("Auth", EVERYONE, "WhoAmI"),
    **_rules("Admin", ONLY_ADMIN, "CreateCompany ListCompanies"),
    **_rules("Admin", ACCOUNT_ADMINS, "CreateUser ListUsers DisableUser"),
    **_rules("Admin", ACCOUNT_ADMINS, "CreateApiKey ListApiKeys RevokeApiKey ListAuditEvents"),
    **_rules("Operators", DECIDERS, "ResolveAnalysis"),
    **_rules("Verdicts", EVERYONE, "GetVerdict GetPublicKeys"),
    **_rules("Challenges", WRITERS, "CreateChallenge GetChallenge AnswerChallenge StreamAnswer"),
}

#: Roles a CLIENT_ADMIN may hand out within its company (never staff roles).
GRANTABLE_BY_CLIENT_ADMIN = frozenset({CLIENT, CLIENT_ADMIN, CLIENT_OPERATOR, SERVICE})


def may_choose_threshold(role: str, result_mode: str) -> bool:
    """May this caller set a decision threshold of its own (``AnalysisRequest.threshold``,
    ``SearchRequest.threshold``)? Only callers that see scores: never a SAFE (front-end)
    credential, which exists so that a browser can neither decide nor learn a score (bisecting a
    threshold recovers the hidden score). Everyone else may, within the bounds of the type."""
    return result_mode != "SAFE" and role in ROLES


def needs_credential(method: str) -> bool:
    return method not in PUBLIC and not method.startswith(UNAUTHENTICATED_PREFIXES)
