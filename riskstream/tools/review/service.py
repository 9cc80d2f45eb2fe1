"""The review service: the ingest thread, the label sender and the web pages (served by waitress)."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .claim import Claim, ClaimRefused
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
        self.claim = Claim(s.ingest.bootstrap_servers, s.labels_topic, self.store.store_id(), self.store.url)
        self.sender = LabelSender(self.store, s.ingest.bootstrap_servers, s.labels_topic, log, claim=self.claim)
        self.app = create_app(self.store, s.web, on_verdict=self.sender.wake.set)  # never waits
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
        """Raises :class:`ClaimRefused` when another store's service sends labels to this labels topic. With
        the broker unreachable it starts anyway; the sender takes the claim before its first send."""
        from waitress import create_server

        try:
            self.claim.ensure()
        except ClaimRefused:
            self.claim.stop()
            raise
        except Exception as e:
            print(f"[review] labels topic claim not taken yet ({type(e).__name__}: {e}); the sender takes it before "
                  "sending", file=self.log, flush=True)
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
        self.claim.stop()
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
                if self.claim.refused:
                    raise ClaimRefused(self.claim.refused)
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def serve_demo(bootstrap: str, cfg, cases: int, port: int = 8765, log=sys.stderr, deadline_s: float = 120) -> None:
    """The review service on the demo's topics with a fresh database and a one-time analyst login; blocks
    until interrupted. ``cfg`` is the demo's ``JobConfig`` (topic names); ``cases``: review + block decisions."""
    from ... import paths
    from .store import random_password

    db = paths.home() / "review" / "demo.db"
    for suffix in ("", "-wal", "-shm"):  # the demo reset its topics: the database starts over with them
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    svc = ReviewService(ServiceSettings(
        db=f"sqlite:///{db}", labels_topic=cfg.labels_topic, port=port,
        ingest=IngestSettings(bootstrap, cfg.decisions_topic, events_topic=cfg.events_topic,
                              control_topic=cfg.control_topic)), log=log)
    user, password = "demo-" + secrets.token_hex(3), random_password()
    svc.store.add_user(user, password, by="riskstream demo", role="admin")  # sees the audit trail too
    svc.start()
    t0 = time.monotonic()
    while svc.store.one("SELECT count(*) FROM cases")[0] < cases and time.monotonic() - t0 < deadline_s:
        time.sleep(0.2)  # the demo's cases are read into the queue
    print(f"\nreview queue:     {svc.url}/  ({cases} cases: review and block)", flush=True)
    print(f"one-time login:   user {user}  password {password}  (this run only; Ctrl-C stops the service)",
          flush=True)
    svc.wait()
