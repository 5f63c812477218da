-- 0001_events: the events table, one row per ingested event.
--
-- What it does:
--   * creates `events` (single node: a ReplacingMergeTree; cluster: `events_local`, a
--     ReplicatedReplacingMergeTree on every replica, and `events`, a Distributed table over them
--     sharded by cityHash64(workspace, coalesce(anonymous_id, user_id)) so a device's events, and
--     every duplicate of an event, live on one shard);
--   * the sorting key (workspace, event, timestamp, event_id) covers every duplicate of one event, so
--     duplicates collapse in merges and in `FINAL` reads;
--   * the taxonomy's common properties as typed columns (NULL when absent or of the wrong JSON type),
--     the whole properties object stays in `properties` as JSON text;
--   * a constraint on the event time: the front door only accepts 2000-01-01 .. now + 24 h, so a row
--     outside [2000, 2200) came from a producer that bypassed it; ClickHouse refuses it and the consumer
--     sends its message to the dead-letter topic rather than storing an absurd date;
--   * bloom-filter skip indexes on user_id and anonymous_id for per-person scans;
--   * non_replicated_deduplication_window: a retried insert carrying the same
--     insert_deduplication_token is dropped on a single node too (Replicated tables always do it).
--
-- Statements are separated by lines holding only `;`. Placeholders: see schemas/migrations/__init__.py.

CREATE TABLE IF NOT EXISTS {{local:events}} {{on_cluster}}
(
    workspace                LowCardinality(String),
    event_id                 String,
    event                    LowCardinality(String),
    user_id                  Nullable(String),
    anonymous_id             Nullable(String),
    linked_user_id           Nullable(String),
    timestamp                DateTime64(3, 'UTC'),
    received_at              DateTime64(3, 'UTC'),
    ingested_at              DateTime64(3, 'UTC'),
    properties               String CODEC(ZSTD(3)),
    paywall_id               LowCardinality(Nullable(String)),
    offer_id                 LowCardinality(Nullable(String)),
    plan_id                  LowCardinality(Nullable(String)),
    plan_ids                 Array(String),
    previous_plan_id         LowCardinality(Nullable(String)),
    placement                LowCardinality(Nullable(String)),
    context                  LowCardinality(Nullable(String)),
    experiment_id            LowCardinality(Nullable(String)),
    variant_id               LowCardinality(Nullable(String)),
    store                    LowCardinality(Nullable(String)),
    environment              LowCardinality(Nullable(String)),
    country                  LowCardinality(Nullable(String)),
    currency                 LowCardinality(Nullable(String)),
    period                   LowCardinality(Nullable(String)),
    reason                   LowCardinality(Nullable(String)),
    price                    Nullable(Float64),
    revenue                  Nullable(Float64),
    is_trial                 Nullable(Bool),
    trial_length_days        Nullable(Int64),
    renewal_number           Nullable(Int64),
    transaction_id           Nullable(String),
    original_transaction_id  Nullable(String),

    CONSTRAINT timestamp_in_range CHECK timestamp >= toDateTime64('2000-01-01 00:00:00', 3, 'UTC')
                                    AND timestamp < toDateTime64('2200-01-01 00:00:00', 3, 'UTC'),
    INDEX idx_user_id user_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_anonymous_id anonymous_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = {{engine:ReplacingMergeTree}}
PARTITION BY toYYYYMM(timestamp)
ORDER BY (workspace, event, timestamp, event_id)
SETTINGS non_replicated_deduplication_window = 1000
;
-- cluster only
CREATE TABLE IF NOT EXISTS {{db}}.events {{on_cluster}} AS {{local:events}}
ENGINE = {{distributed:events, cityHash64(workspace, coalesce(anonymous_id, user_id))}}
