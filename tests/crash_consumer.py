"""A consumer that SIGKILLs itself between the ClickHouse insert and the offset
commit of its first batch: the one point of a real crash that cannot be hit
by timing a kill from outside. Everything else is the real worker."""

from __future__ import annotations

import os
import signal

from deploy.components import make_worker
from deploy.settings import Settings


def main() -> None:
    worker = make_worker(Settings.from_env())
    subscriber = worker._subscriber

    def commit(offsets):
        if worker.flushed_events == 0 and offsets:
            print("inserted; killing myself before the commit", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        subscriber.__class__.commit(subscriber, offsets)

    subscriber.commit = commit
    worker.run()


if __name__ == "__main__":
    main()
