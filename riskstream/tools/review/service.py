"""The review service: the ingest thread, the label sender and the web pages (served by waitress)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from .ingest import Ingest, IngestSettings
from .labels import LabelSender
from .store import Store
from .web import WebSettings, create_app

RESTART_PAUSE_S = 2.0


@dataclass
class ServiceSettings:
    db: str
    ingest: IngestSettings
    labels_topic: str
    host: str = "127.0.0.1"
    port: int = 8765
    web: WebSettings = field(default_factory=WebSettings)
    threads: int = 4


class ReviewService:
    """``start()`` runs everything in background threads; ``stop()`` ends them. ``url`` is the pages' root."""

    def __init__(self, s: ServiceSettings, log=sys.stderr):
        self.s = s
        self.log = log
        self.store = Store(s.db)
        self.ingest = Ingest(self.store, s.ingest, log)
        self.sender = LabelSender(self.store, s.ingest.bootstrap_servers, s.labels_topic, log)
        self.app = create_app(self.store, s.web, on_verdict=self.sender.try_send)
        self.server = None
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.s.host}:{self.s.port}"

    def ingest_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.ingest.run()
            except Exception as e:  # the store kept only whole batches: resume from its offsets
                print(f"[review] ingest stopped ({type(e).__name__}: {e}); resuming from the stored offsets",
                      file=self.log, flush=True)
                self.stopping.wait(RESTART_PAUSE_S)

    def start(self) -> "ReviewService":
        from waitress import create_server

        self.server = create_server(self.app, host=self.s.host, port=self.s.port, threads=self.s.threads,
                                    ident="riskstream-review", clear_untrusted_proxy_headers=True)
        self.s.port = self.server.effective_port
        for name, target in (("review-ingest", self.ingest_loop), ("review-labels", self.sender.run),
                             ("review-web", self.server.run)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)
        self.sender.wake.set()  # labels left pending by an earlier run
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.ingest.stop()
        self.sender.stop()
        if self.server is not None:
            self.server.close()
        for t in self.threads:
            t.join(timeout=10)

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C, SIGTERM)."""
        import signal

        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        try:
            while not self.stopping.is_set():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
