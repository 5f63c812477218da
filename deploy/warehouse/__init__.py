"""The embedded warehouse: chdb (ClickHouse as a library) behind ClickHouse's HTTP interface.

Only one process may open a chdb data directory, so one long-running process owns it and everything else
(consumers, analysts, tests) talks to it with clickhouse-connect or curl, as to a ClickHouse server.
Run it with `python -m deploy.warehouse_server`.

Modules: server (process, shutdown), handler (HTTP interface), request (URL parameters), sql (statement
routing), codec (bodies, compression), engine (chdb handles), sessions, errors.
"""
