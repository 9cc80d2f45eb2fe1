"""Builds ``payments.csv``, the shipped sample of "your own data": riskstream's generator traffic
re-dressed as a foreign export (its own column names, integer ids, local datetimes, its own event-type
codes, 0/1 labels, extra columns), which ``payments.mapping.toml`` maps back to the event contract.

    python -m models.samples.build_payments     # rewrites models/samples/payments.csv (deterministic)

The sample is 3,000 events over 28 days (seed 15). Rows are sorted by transaction time, as exports
usually are.
"""

from __future__ import annotations

import csv
import random
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from riskstream.generator import TrafficGenerator

HERE = Path(__file__).resolve().parent
EVENTS, DAYS, SEED = 3000, 28, 15
ZONE = ZoneInfo("Europe/Paris")
KINDS = {"login": "LOGIN", "signup": "SIGNUP", "add_payment_method": "ADD_CARD", "place_order": "ORDER",
         "payment": "PAY", "refund": "REFUND", "promo_redeem": "PROMO"}
COLUMNS = ("tx_id", "tx_time", "customer_id", "terminal_id", "ip_address", "amount", "currency", "card_hash",
           "kind", "channel", "merchant_note", "is_fraud", "fraud_type")


def rows(events: int = EVENTS, days: int = DAYS, seed: int = SEED) -> list[dict]:
    """The sample's rows (dicts of text, as CSV holds them), sorted by tx_time."""
    gen = TrafficGenerator(seed=seed, sim_rate=events / (days * 86_400))
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(gen.generate(events)):
        ev, lab = r.event, r.label
        local = datetime.fromtimestamp(ev["ts"] / 1000, tz=timezone.utc).astimezone(ZONE).replace(tzinfo=None)
        out.append({
            "tx_id": str(500_000 + i),
            "tx_time": local.isoformat(sep=" ", timespec="milliseconds"),
            "customer_id": str(int(ev["user_id"].split("-")[1])),
            "terminal_id": str(int(ev["device_id"].split("-")[1])),
            "ip_address": ev["ip"],
            "amount": repr(float(ev["amount"])),
            "currency": ev["currency"],
            "card_hash": f"h{int(ev['payment_ref'].split('-')[1]) * 7919 % 1_000_003:07d}" if "payment_ref" in ev
            else "",
            "kind": KINDS[ev["event_type"]],
            "channel": rng.choice(("web", "web", "app")),
            "merchant_note": rng.choice(("", "", "gift", "repeat customer")),
            "is_fraud": "1" if lab["fraud"] else "0",
            "fraud_type": lab["scenario"] if lab["fraud"] else "",
            "_ts": ev["ts"],
        })
    out.sort(key=lambda d: d["_ts"])
    return out


def main() -> None:
    with open(HERE / "payments.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows())


if __name__ == "__main__":
    main()
