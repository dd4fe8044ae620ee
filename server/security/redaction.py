"""SAFE results: what a credential bound to SAFE may see — the decision, never a score, a box,
a landmark or a template. Fields are kept by an allow-list per message type; anything not listed
(including message types added later) is cleared, so a new field cannot leak by default."""

from __future__ import annotations

from google.protobuf.message import Message

#: Message full name → fields a SAFE caller may receive. Unlisted types are emptied.
SAFE_FIELDS: dict[str, frozenset[str]] = {
    "vigil.v1.LivenessResponse": frozenset({"live", "face_count"}),
    "vigil.v1.VerifyResponse": frozenset({"match"}),
    "vigil.v1.ServerInfo": frozenset({"version", "max_image_bytes", "max_image_pixels"}),
    "vigil.v1.Folder": frozenset(
        {"id", "meta", "created_at", "updated_at", "resolution", "media", "analyses"}
    ),
    "vigil.v1.MediaInfo": frozenset(
        {"id", "folder_id", "tags", "meta", "content_type", "original_name", "size", "created_at"}
    ),
    "vigil.v1.Analysis": frozenset(
        {"id", "folder_id", "type", "state", "resolution", "error", "created_at", "finished_at"}
    ),
    "vigil.v1.FolderEvent": frozenset({"analysis", "folder_resolution", "final"}),
    "vigil.v1.ListFoldersResponse": frozenset({"folders", "next_page_token"}),
    "vigil.v1.ListAnalysesResponse": frozenset({"analyses"}),
    "vigil.v1.CreateAnalysesResponse": frozenset({"analyses"}),
    "vigil.v1.DeleteFolderResponse": frozenset({"media_deleted", "analyses_deleted"}),
    "vigil.v1.DeleteMediaResponse": frozenset(),
    "vigil.v1.Webhook": frozenset({"id", "url", "folder_id", "secret", "created_at"}),
    "vigil.v1.ListWebhooksResponse": frozenset({"webhooks"}),
    "vigil.v1.DeleteWebhookResponse": frozenset(),
    "vigil.v1.Delivery": frozenset({"id", "webhook_id", "folder_id", "state", "created_at"}),
    "vigil.v1.ListDeliveriesResponse": frozenset({"deliveries"}),
    "vigil.v1.Principal": frozenset(
        {"company_id", "company_name", "role", "result_mode", "user_id", "api_key_id"}
    ),
    "vigil.v1.SignedVerdict": frozenset({"token", "expires_at", "key_id"}),
    "vigil.v1.PublicKeys": frozenset({"jwks_json"}),
    "vigil.v1.TokenPair": frozenset(
        {"access_token", "access_expires_at", "refresh_token", "refresh_expires_at"}
    ),
    "vigil.v1.StreamLivenessUpdate": frozenset(
        {"final", "outcome", "frames_received", "frames_processed", "frames_skipped"}
    ),
    "vigil.v1.Challenge": frozenset(
        {"id", "nonce", "gestures", "gesture_window_ms", "created_at", "expires_at", "answered"}
    ),
    "vigil.v1.ChallengeVerdict": frozenset(
        {"challenge_id", "passed", "resolution", "verdict_token", "verdict_expires_at", "key_id"}
    ),
    "google.protobuf.Timestamp": frozenset({"seconds", "nanos"}),
}


def redact(message: Message) -> Message:
    """Clear, in place, every field a SAFE caller may not see; returns the message."""
    allowed = SAFE_FIELDS.get(message.DESCRIPTOR.full_name, frozenset())
    for field, value in message.ListFields():
        if field.name not in allowed:
            message.ClearField(field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            items = value if field.is_repeated else [value]
            for item in items:
                redact(item)
    return message
