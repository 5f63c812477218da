-- 0002_identity: identity links and the resolved anonymous_id -> user_id map ("first link wins").
--
-- What it does:
--   * creates `identity_links`: one row per event that carried both anonymous_id and user_id
--     (the consumer inserts them next to the event; duplicates are harmless);
--   * creates `identity_map`, an AggregatingMergeTree keyed by (workspace, anonymous_id) holding
--     argMinState(user_id, (timestamp, event_id)): the user of the EARLIEST linking event wins,
--     whatever order the links arrive in, ties broken by event_id;
--   * creates `identity_map_mv`, the materialized view that feeds identity_map from every insert into
--     identity_links (cluster: on the local tables of each shard);
--   * creates `identity_resolved` (workspace, anonymous_id, user_id): the merged map, the one place
--     that answers "which user is this anonymous id?".
-- Cluster: identity_links and identity_map are sharded by cityHash64(workspace, anonymous_id), so
-- all links of one anonymous id meet on one shard (the view merges states across shards anyway).

CREATE TABLE IF NOT EXISTS {{local:identity_links}} {{on_cluster}}
(
    workspace     LowCardinality(String),
    anonymous_id  String,
    user_id       String,
    timestamp     DateTime64(3, 'UTC'),
    event_id      String
)
ENGINE = {{engine:MergeTree}}
ORDER BY (workspace, anonymous_id)
;
-- cluster only
CREATE TABLE IF NOT EXISTS {{db}}.identity_links {{on_cluster}} AS {{local:identity_links}}
ENGINE = {{distributed:identity_links, cityHash64(workspace, anonymous_id)}}
;
CREATE TABLE IF NOT EXISTS {{local:identity_map}} {{on_cluster}}
(
    workspace     LowCardinality(String),
    anonymous_id  String,
    user_id       AggregateFunction(argMin, String, Tuple(DateTime64(3, 'UTC'), String))
)
ENGINE = {{engine:AggregatingMergeTree}}
ORDER BY (workspace, anonymous_id)
;
-- cluster only
CREATE TABLE IF NOT EXISTS {{db}}.identity_map {{on_cluster}} AS {{local:identity_map}}
ENGINE = {{distributed:identity_map, cityHash64(workspace, anonymous_id)}}
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.identity_map_mv {{on_cluster}} TO {{local:identity_map}}
AS SELECT
    workspace,
    anonymous_id,
    argMinState(user_id, (timestamp, event_id)) AS user_id
FROM {{local:identity_links}}
GROUP BY workspace, anonymous_id
;
CREATE VIEW IF NOT EXISTS {{db}}.identity_resolved {{on_cluster}}
AS SELECT
    workspace,
    anonymous_id,
    argMinMerge(user_id) AS user_id
FROM {{db}}.identity_map
GROUP BY workspace, anonymous_id
