"""Entry point of the embedded warehouse: `python -m deploy.warehouse_server`.

Serves the chdb data directory `<FLOKIT_DATA_DIR>/warehouse` over ClickHouse's HTTP interface on
FLOKIT_WAREHOUSE_BIND (default 127.0.0.1:8123), so clickhouse-connect and curl use it like a ClickHouse
server. The implementation lives in the `deploy.warehouse` package.
"""

from deploy.warehouse.server import WarehouseServer, main, serve

__all__ = ["WarehouseServer", "main", "serve"]

if __name__ == "__main__":
    main()
