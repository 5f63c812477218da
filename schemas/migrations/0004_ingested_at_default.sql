-- 0004_ingested_at_default: ClickHouse stamps `ingested_at` itself, at insert.
--
-- What it does:
--   * gives events.ingested_at the default now64(3), the time of the insert, so a consumer inserts the
--     front door's event lines as they are (schemas/envelope.py) and only rewrites the line of an event
--     it stamps with linked_user_id. The column's meaning is unchanged: when the row was written.
--
-- Statements are separated by lines holding only `;`. Placeholders: see schemas/migrations/__init__.py.

ALTER TABLE {{local:events}} {{on_cluster}} MODIFY COLUMN ingested_at DEFAULT now64(3)
;
-- cluster only
ALTER TABLE {{db}}.events {{on_cluster}} MODIFY COLUMN ingested_at DEFAULT now64(3)
