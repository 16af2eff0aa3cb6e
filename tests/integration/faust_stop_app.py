"""A plain Faust app (not grader's worker) to show how long a stopping worker waits.

Run by tests/integration/test_faust_shutdown.py, one process per group member:

    python faust_stop_app.py BROKER_URL APP_ID DATA_DIR WEB_PORT CLIENT_ID [--bounded]

One agent reads the topic ``{APP_ID}-src`` (3 partitions); the group session is 45 s.
``--bounded`` applies grader's patch (grader/stream/faust_patches/shutdown.py): from the
first SIGTERM or SIGINT, the process exits within 4 s (grader.stream.worker's
SHUTDOWN_GRACE), whatever is still pending.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import faust

GRACE = 4.0  # seconds, as grader.stream.worker.SHUTDOWN_GRACE


def main(argv: list[str]) -> None:
    url, app_id, data_dir, web_port, client_id, *flags = argv
    app = faust.App(app_id, broker=url, datadir=data_dir, web_port=int(web_port),
                    web_bind="127.0.0.1", broker_client_id=client_id, topic_partitions=3,
                    broker_session_timeout=45, broker_heartbeat_interval=1,
                    autodiscover=False)
    source = app.topic(f"{app_id}-src", partitions=3)

    @app.agent(source)
    async def read(stream: Any) -> None:
        async for _value in stream:
            pass

    worker: Any = faust.Worker
    if "--bounded" in flags:
        from grader.stream.faust_patches.shutdown import worker_class

        def exit_if_stuck() -> None:
            def exit_now() -> None:
                print("still stopping: exiting now", flush=True)
                logging.shutdown()
                os._exit(0)

            timer = threading.Timer(GRACE, exit_now)
            timer.daemon = True
            timer.start()

        worker = worker_class(exit_if_stuck)
    worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
