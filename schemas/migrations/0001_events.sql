-- 0001_events: the events table, one row per ingested event.
--
-- What it does:
--   * creates `events` (single node: a ReplacingMergeTree; cluster: `events_local`, a
--     ReplicatedReplacingMergeTree on every replica, and `events`, a Distributed table over them
--     sharded by cityHash64(workspace, coalesce(anonymous_id, user_id)) so a device's events, and
--     every duplicate of an event, live on one shard);
--   * the sorting key (workspace, event, timestamp, event_id) covers every duplicate of one event, so
--     duplicates collapse in merges and in `FINAL` reads;
--   * the taxonomy's common properties as typed columns that ClickHouse fills itself from `properties`:
--     the EPHEMERAL (never stored) typed_properties parses the JSON once per row with JSONExtract into a
--     named tuple, and each typed column's DEFAULT takes its element. The consumer inserts the envelope's
--     columns only, as JSONEachRow, and never converts a property in Python; a property absent (or not
--     convertible to the column's type) is NULL, an empty array for plan_ids; `properties` keeps it all;
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
    -- Not stored: the properties parsed once per row into every typed column below (one JSON parse, not 22).
    typed_properties         Tuple(
        paywall_id Nullable(String),
        offer_id Nullable(String),
        plan_id Nullable(String),
        plan_ids Array(String),
        previous_plan_id Nullable(String),
        placement Nullable(String),
        context Nullable(String),
        experiment_id Nullable(String),
        variant_id Nullable(String),
        store Nullable(String),
        environment Nullable(String),
        country Nullable(String),
        currency Nullable(String),
        period Nullable(String),
        reason Nullable(String),
        price Nullable(Float64),
        revenue Nullable(Float64),
        is_trial Nullable(Bool),
        trial_length_days Nullable(Int64),
        renewal_number Nullable(Int64),
        transaction_id Nullable(String),
        original_transaction_id Nullable(String))
        EPHEMERAL JSONExtract(properties, 'Tuple(paywall_id Nullable(String), offer_id Nullable(String), plan_id Nullable(String), plan_ids Array(String), previous_plan_id Nullable(String), placement Nullable(String), context Nullable(String), experiment_id Nullable(String), variant_id Nullable(String), store Nullable(String), environment Nullable(String), country Nullable(String), currency Nullable(String), period Nullable(String), reason Nullable(String), price Nullable(Float64), revenue Nullable(Float64), is_trial Nullable(Bool), trial_length_days Nullable(Int64), renewal_number Nullable(Int64), transaction_id Nullable(String), original_transaction_id Nullable(String))'),
    paywall_id               LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'paywall_id'),
    offer_id                 LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'offer_id'),
    plan_id                  LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'plan_id'),
    plan_ids                 Array(String) DEFAULT tupleElement(typed_properties, 'plan_ids'),
    previous_plan_id         LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'previous_plan_id'),
    placement                LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'placement'),
    context                  LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'context'),
    experiment_id            LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'experiment_id'),
    variant_id               LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'variant_id'),
    store                    LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'store'),
    environment              LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'environment'),
    country                  LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'country'),
    currency                 LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'currency'),
    period                   LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'period'),
    reason                   LowCardinality(Nullable(String)) DEFAULT tupleElement(typed_properties, 'reason'),
    price                    Nullable(Float64) DEFAULT tupleElement(typed_properties, 'price'),
    revenue                  Nullable(Float64) DEFAULT tupleElement(typed_properties, 'revenue'),
    is_trial                 Nullable(Bool) DEFAULT tupleElement(typed_properties, 'is_trial'),
    trial_length_days        Nullable(Int64) DEFAULT tupleElement(typed_properties, 'trial_length_days'),
    renewal_number           Nullable(Int64) DEFAULT tupleElement(typed_properties, 'renewal_number'),
    transaction_id           Nullable(String) DEFAULT tupleElement(typed_properties, 'transaction_id'),
    original_transaction_id  Nullable(String) DEFAULT tupleElement(typed_properties, 'original_transaction_id'),

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
