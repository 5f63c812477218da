"""The HTTP front door: the FloKit events API on Flask (run by gunicorn).

`create_app(config, publisher=…, state=…)` builds the app from what it is given: its configuration, the queue
it publishes to and the shared state it admits requests with. The deployment picks and builds those
(deploy/components.py) in each gunicorn worker after the fork, so queue producers and state connections are
never shared across processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask

from schemas.events import EventValidator
from schemas.queue import Publisher

from . import errors, events, health
from .admission import Admission
from .config import FrontDoorConfig
from .enqueue import Enqueuer
from .fast_routes import FastRoutes
from .frontdoor import FrontDoor
from .state.base import FrontDoorState


def create_app(
    config: FrontDoorConfig,
    *,
    publisher: Publisher,
    state: FrontDoorState,
    clock: Callable[[], float] = time.time,
) -> Flask:
    app = Flask(__name__)
    app.extensions["flokit"] = FrontDoor(
        config=config,
        publisher=publisher,
        state=state,
        clock=clock,
        validator=EventValidator(strict_events=False, clock=clock),
        strict_validator=EventValidator(strict_events=True, clock=clock),
        admission=Admission(state, config.rate_limit_per_minute),
        enqueuer=Enqueuer(publisher, config.enqueue_timeout_seconds),
    )
    errors.register(app)
    app.register_blueprint(events.bp)
    app.register_blueprint(health.bp)
    app.wsgi_app = FastRoutes(app)  # type: ignore[method-assign]  # Flask's documented way to wrap it
    return app
