-- 0003_analyst_views: the views analysts query, all correct before any background merge.
--
-- What it does:
--   * events_deduped: `events FINAL`, one row per event however often it was delivered;
--   * events_resolved: every column of events_deduped, plus
--       resolved_user_id = coalesce(user_id, identity_resolved.user_id, linked_user_id)
--       person_id        = coalesce(resolved_user_id, anonymous_id)
--     so a device's pre-login anonymous events count for the user it was (first) linked to;
--   * paywall_funnel: the paywall, purchase and trial/subscription-start events of events_resolved
--     with the columns windowFunnel queries need, and `plans` (the plans an event is about: plan_ids
--     of a paywall_viewed, [plan_id] otherwise) for funnels by plan, and `ts`, the timestamp to the
--     second as a DateTime (windowFunnel does not take DateTime64; its window is then in seconds).

CREATE VIEW IF NOT EXISTS {{db}}.events_deduped {{on_cluster}}
AS SELECT *
FROM {{db}}.events FINAL
;
CREATE VIEW IF NOT EXISTS {{db}}.events_resolved {{on_cluster}}
AS SELECT
    e.*,
    coalesce(e.user_id, r.user_id, e.linked_user_id) AS resolved_user_id,
    assumeNotNull(coalesce(resolved_user_id, e.anonymous_id)) AS person_id
FROM {{db}}.events_deduped AS e
LEFT JOIN
(
    -- toNullable: an anonymous id without a link gets NULL here, not '' (whatever join_use_nulls says)
    SELECT workspace, anonymous_id, toNullable(user_id) AS user_id
    FROM {{db}}.identity_resolved
) AS r ON e.workspace = r.workspace AND e.anonymous_id = r.anonymous_id
;
CREATE VIEW IF NOT EXISTS {{db}}.paywall_funnel {{on_cluster}}
AS SELECT
    workspace,
    person_id,
    event,
    timestamp,
    toDateTime(timestamp, 'UTC') AS ts,
    paywall_id,
    offer_id,
    plan_id,
    if(event = 'paywall_viewed', plan_ids, if(plan_id IS NULL, [], [toString(plan_id)])) AS plans,
    placement,
    context,
    store,
    price,
    revenue,
    currency,
    event_id
FROM {{db}}.events_resolved
WHERE event IN ('paywall_viewed', 'paywall_dismissed',
                'purchase_started', 'purchase_completed', 'purchase_failed', 'purchase_cancelled',
                'trial_started', 'trial_converted', 'subscription_started')
