"""The front door's shared state: API keys, workspace settings, rate-limit
counters and idempotency records, seen alike by every front-door process.

`base.FrontDoorState` is the interface; `redis_state` (production) and
`sqlite_state` (embedded) implement it. deploy.components picks one.
"""
