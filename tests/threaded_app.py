"""An aiohttp application served on a loopback port from a thread with an event loop of its own, so that a test's
local servers (Slack's Web API, Telegram's Bot API) answer while the code under test runs its own loop."""

import asyncio
import threading

from aiohttp import web


class ThreadedApp:
    def __init__(self, app: web.Application, name: str) -> None:
        self.app, self.name = app, name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Serve; the port, once it listens."""
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"the {self.name} test server did not start")
        return self.port

    def stop(self) -> None:
        assert self.loop is not None and self._runner is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _serve(self, started: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()
        self.loop.run_forever()
        self.loop.close()
