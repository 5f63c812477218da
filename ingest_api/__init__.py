"""The HTTP front door: the FloKit events API on Flask (run by gunicorn).

`create_app()` builds the app; gunicorn calls it in each worker after the fork
(`deploy/gunicorn.conf.py`), so queue producers and state connections are
never shared across processes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from typing import TYPE_CHECKING

from flask import Flask

from deploy.settings import Settings

if TYPE_CHECKING:
    from schemas.queue import Publisher
    from schemas.events import EventValidator

    from .admission import Admission
    from .enqueue import Enqueuer
    from .state.base import FrontDoorState


@dataclass
class FrontDoor:
    """What the request handlers need, wired once per process."""

    settings: Settings
    publisher: Publisher
    state: FrontDoorState
    clock: Callable[[], float]
    validator: EventValidator
    strict_validator: EventValidator
    # the key check and rate-limit count of every request (state.admit_many, shared by concurrent requests)
    admission: Admission
    enqueuer: Enqueuer  # concurrent requests share queue records


def create_app(settings: Settings | None = None, *, publisher: Publisher | None = None,
               state: FrontDoorState | None = None, clock: Callable[[], float] = time.time) -> Flask:
    from deploy import components
    from schemas.events import EventValidator

    from . import errors, events, health
    from .admission import Admission
    from .enqueue import Enqueuer
    from .fast_routes import FastRoutes

    settings = settings or Settings.from_env()
    state = state or components.make_state(settings)
    publisher = publisher or components.make_publisher(settings)
    app = Flask(__name__)
    app.extensions["flokit"] = FrontDoor(
        settings=settings,
        publisher=publisher,
        state=state,
        clock=clock,
        validator=EventValidator(strict_events=False, clock=clock),
        strict_validator=EventValidator(strict_events=True, clock=clock),
        admission=Admission(state, settings.rate_limit_per_minute),
        enqueuer=Enqueuer(publisher, settings.enqueue_timeout_seconds),
    )
    errors.register(app)
    app.register_blueprint(events.bp)
    app.register_blueprint(health.bp)
    app.wsgi_app = FastRoutes(app)
    return app
