"""Wire contracts: every message type, every error code, and the envelope codec, in one place."""
from protocols.errors import ErrorCode, SyncopateError
from protocols.messages import MessageType, Envelope

__all__ = ["ErrorCode", "SyncopateError", "MessageType", "Envelope"]
