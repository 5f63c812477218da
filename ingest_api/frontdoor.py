"""What the request handlers share: the parts of one front-door process, wired once by create_app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.events import EventValidator
from schemas.queue import Publisher

from .admission import Admission
from .config import FrontDoorConfig
from .enqueue import Enqueuer
from .state.base import FrontDoorState


@dataclass
class FrontDoor:
    """What the request handlers need, wired once per process."""

    config: FrontDoorConfig
    publisher: Publisher
    state: FrontDoorState
    clock: Callable[[], float]
    validator: EventValidator
    strict_validator: EventValidator
    # the key check and rate-limit count of every request (state.admit_many, shared by concurrent requests)
    admission: Admission
    enqueuer: Enqueuer  # concurrent requests share queue records
