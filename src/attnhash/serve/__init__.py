"""The search service: HTTP API + web page over an index file (FastAPI, served by uvicorn).

    from attnhash.serve import create_app, run_server
    run_server(create_app("fmnist.idx"), host="127.0.0.1", port=8000)

`BackgroundServer` runs an app on a free loopback port in a thread (tests, load tests, notebooks).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from attnhash.serve.http import create_app
from attnhash.serve.service import SearchService

__all__ = ["create_app", "SearchService", "run_server", "BackgroundServer"]


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30)


class BackgroundServer:
    """uvicorn in a daemon thread on 127.0.0.1 and a free port; `url` once started; stop() or use `with`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="auto")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="attnhash-server", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
