"""Queue messages → envelopes, or the reason they cannot be processed."""

from __future__ import annotations

from dataclasses import dataclass

from schemas import envelope
from schemas.queue import Message


@dataclass(frozen=True, slots=True)
class Decoded:
    message: Message
    envelope: envelope.Envelope


@dataclass(frozen=True, slots=True)
class Undecodable:
    message: Message
    reason: str


def decode(message: Message) -> Decoded | Undecodable:
    try:
        return Decoded(message, envelope.decode(message.value))
    except envelope.EnvelopeError as exc:
        return Undecodable(message, f"corrupt envelope: {exc}")
