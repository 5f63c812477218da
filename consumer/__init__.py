"""The consumer workers: queue → ClickHouse, exactly once as analysts see it.

A worker is a chain of small steps, each in its own module:

    poll (a schemas.queue.Subscriber) → decode (decode.py) → batch (batch.py)
      → resolve identities (identity.py) → rows (rows.py) → write (writer.py)
      → dead letters (dead_letters.py) → commit offsets (only after ClickHouse acknowledged the batch)

`worker.py` runs the chain, waiting out what is transient (transient.py) and
stopping on anything else. It knows only its own ConsumerConfig (config.py) and
the interfaces it is given: deploy/components.py wires the concrete queue and
warehouse clients. Which mechanism keeps which duplicate out of the analysts'
tables and views (each duplicate: what covers it):

- a client retry with Idempotency-Key: the front door replays the first answer; nothing new is queued.
- a retry after a 503 whose first attempt did reach Kafka: the retry reuses the attempt's event ids; both
  copies collapse (below).
- a Kafka producer retry (the producer is not idempotent: deploy/queue/kafka_queue.py says why): the copy
  carries the same event ids: collapsed as below.
- the same batch inserted twice (insert timed out, retried): `insert_deduplication_token` = hash of the
  batch's event ids.
- a worker killed after inserting but before committing, or a rebalance mid-batch: the redelivered events
  carry the same event ids: a bounded recent-ids set in each worker drops copies it has seen, and the
  `events` table's ReplacingMergeTree key plus `FINAL` in every documented view hide any copy that still
  lands, before any merge.
"""
