"""Seeded, reproducible synthetic e-commerce traffic with labelled fraud scenarios.

Normal shoppers log in, order, pay, add cards, redeem promos and ask refunds; mixed in are four fraud
scenarios, each event labelled with its scenario:

- ``card_testing``: one account on one device fires a burst of small payments / card additions, each
  with another card (a list of stolen cards being tried);
- ``account_takeover``: an established account logs in from a new device and IP, adds a card and
  places large orders;
- ``promo_ring``: one device creates many fresh accounts that each redeem a promo and pay with the
  ring's one card (a fraud ring);
- ``fresh_account_big_order``: a brand-new account places a high-value order within minutes.

With ``days`` (traffic spread over that many simulated days), two slow scenarios join them, the patterns
that only long windows and delayed labels reveal (``LONG_SCENARIOS``):

- ``compromised_device``: a device (a shop terminal, an infected phone) on which, over one to four weeks,
  established shoppers place ordinary-looking orders that are all fraud; nothing in one session stands
  out, only the device's earlier fraud, once labelled days later;
- ``slow_card_testing``: one account and device test one to three stolen cards with one or two small
  payments a day each, over five to eight days, below every short window's burst.

With ``rings`` (``riskstream generate --rings``; off by default, so the default traffic is unchanged), a
fraud ring that evades the one-hop features joins them (``RING_SCENARIO``), and normal traffic gains the
sharing that makes one-hop linkage ambiguous:

- ``fraud_ring``: 8 to 16 aged accounts (no signup: bought or farmed earlier) over two to six days; each
  device is shared by two accounts at most (accounts 2k and 2k+1), cards are passed along a chain (account
  i pays with cards i and i+1, so each card has two accounts at most), and every event comes from one or
  two gateway ips shared by the whole ring; sessions look like normal orders (login, order, payment);
- households (normal): a new shopper signs up with one to three others on one device and one home ip, each
  with their own card;
- offices and public wifi (normal): about a third of shoppers belong to an office whose ip they shop from
  half the time; a few public wifi ips serve any shopper now and then.

These draws come from a random stream of their own (``_rings_rng``), so with ``rings`` the normal sessions
are scheduled as without, plus the rings and the sharing.

Every record's label carries ``arrival_ts``: when the label (a chargeback, an analyst's verdict) would
reach the job, one to fourteen days after the event (``LABEL_DELAY_MS``, drawn from a random stream of its
own, so the events are the same with or without it).

Events that carry a payment instrument (``udfs.events.PAYMENT_REF_TYPES``) name it in ``payment_ref``:
a shopper pays with their newest card; adding a payment method adds a card.

Event time is simulated (``sim_rate`` events per simulated second from ``start_ts``); emission order is
event-time order with small, bounded disorder (``max_disorder_ms``), as real producers deliver.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Iterator

import orjson

from udfs.events import PAYMENT_REF_TYPES

SCENARIOS = ("card_testing", "account_takeover", "promo_ring", "fresh_account_big_order")
LONG_SCENARIOS = ("compromised_device", "slow_card_testing")
ALL_SCENARIOS = SCENARIOS + LONG_SCENARIOS
RING_SCENARIO = "fraud_ring"
RING_RATE = 1 / 700  # with rings: the chance that a scheduled session starts a ring instead
DAY_MS = 86_400_000
LABEL_DELAY_MS = (DAY_MS, 14 * DAY_MS)  # a label arrives uniformly 1 to 14 days after its event
NORMAL = "normal"
MALFORMED = "malformed"
DEFAULT_START_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")


@dataclass(frozen=True)
class Labelled:
    """One record to send: the value bytes' source (a dict, or raw bytes for malformed records)."""

    key: str
    event: dict | None
    raw: bytes | None
    label: dict


class _Ids:
    def __init__(self, rng: random.Random, seed: int):
        self.rng = rng
        self.seed = seed
        self.n = {"u": 0, "d": 0, "e": 0, "c": 0}

    def new(self, kind: str) -> str:
        self.n[kind] += 1
        return f"{kind}{self.seed}-{self.n[kind]:07d}"

    def ip(self) -> str:
        r = self.rng
        return f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _ip(rng: random.Random) -> str:
    return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


class TrafficGenerator:
    def __init__(self, seed: int = 7, start_ts: int = DEFAULT_START_TS, sim_rate: float = 5.0,
                 fraud_share: float = 0.12, bad_share: float = 0.0, max_disorder_ms: int = 3_000,
                 days: float | None = None, rings: bool = False):
        if not 0 <= fraud_share < 1 or not 0 <= bad_share < 1:
            raise ValueError("fraud_share and bad_share must be in [0, 1)")
        if days is not None and days <= 0:
            raise ValueError("days must be positive")
        self.seed, self.start_ts, self.sim_rate = seed, start_ts, sim_rate
        self.fraud_share, self.bad_share, self.max_disorder_ms = fraud_share, bad_share, max_disorder_ms
        self.days = days  # spread the traffic over this many days (instead of sim_rate) with the slow scenarios
        self.rings = rings  # add fraud rings, households, offices and public wifi (module docstring)
        self._rr: random.Random | None = None
        self._offices: list[str] = []
        self._wifi: list[str] = []

    # -- scenario builders: each returns [(offset_ms, event_type, user, device, ip, amount)] ----------
    def _normal(self, r: random.Random, ids: _Ids, users: list) -> list:
        if not users or r.random() < 0.08:  # a new shopper signs up
            u = {"id": ids.new("u"), "devices": [ids.new("d")], "ip": ids.ip(), "cur": r.choice(CURRENCIES),
                 "cards": [ids.new("c")]}
            users.append(u)
            steps = [("signup", 0.0)]
            if r.random() < 0.5:
                amt = round(r.lognormvariate(3.3, 0.6), 2)
                steps += [("place_order", amt), ("payment", amt)]
            out = self._sessionize(r, u, u["devices"][0], u["ip"], steps, 20_000, 240_000)
            if self._rr is not None:
                self._office(u)
                if self._rr.random() < 0.3:  # a household: others sign up on the same device and home ip
                    out += self._household(u, ids, users)
            return out
        u = r.choice(users)
        device = r.choice(u["devices"])
        if r.random() < 0.04:  # a shopper on a new phone
            device = ids.new("d")
            u["devices"].append(device)
        ip = u["ip"] if r.random() < 0.85 else ids.ip()
        if self._rr is not None:
            x = self._rr.random()
            if u.get("office") and x < 0.5:
                ip = u["office"]
            elif x > 0.97:
                ip = self._rr.choice(self._wifi)
        kind = r.random()
        amt = round(r.lognormvariate(3.8, 0.8), 2)
        if kind < 0.45:
            steps = [("login", 0.0), ("place_order", amt), ("payment", amt)]
        elif kind < 0.62:
            steps = [("login", 0.0)]
        elif kind < 0.72:
            u["cards"].append(ids.new("c"))
            steps = [("login", 0.0), ("add_payment_method", 0.0), ("place_order", amt), ("payment", amt)]
        elif kind < 0.80:
            steps = [("login", 0.0), ("refund", round(amt * r.uniform(0.2, 1.0), 2))]
        elif kind < 0.92:
            small = round(amt * 0.6, 2)
            steps = [("login", 0.0), ("promo_redeem", 0.0), ("place_order", small), ("payment", small)]
        else:
            steps = [("login", 0.0), ("place_order", amt), ("payment", amt), ("place_order", amt / 2),
                     ("payment", amt / 2)]
        return self._sessionize(r, u, device, ip, steps, 10_000, 180_000)

    # -- rings and sharing (with rings only; every draw from self._rr) -----------------------------
    def _office(self, u: dict) -> None:
        rr = self._rr
        if rr.random() < 0.35:
            u["office"] = rr.choice(self._offices)

    def _household(self, first: dict, ids: _Ids, users: list) -> list:
        rr, out = self._rr, []
        t = 0
        for _ in range(rr.randint(1, 3)):
            u = {"id": ids.new("u"), "devices": [first["devices"][0]], "ip": first["ip"], "cur": first["cur"],
                 "cards": [ids.new("c")]}
            self._office(u)
            users.append(u)
            t += rr.randint(60_000, 3 * 3_600_000)
            amt = round(rr.lognormvariate(3.3, 0.6), 2)
            sess = self._sessionize(rr, u, first["devices"][0], first["ip"],
                                    [("signup", 0.0), ("place_order", amt), ("payment", amt)], 20_000, 240_000)
            out += [(t + o, *rest) for o, *rest in sess]
        return out

    def _ring(self, ids: _Ids) -> list:
        rr = self._rr
        n = rr.randint(8, 16)
        devices = [ids.new("d") for _ in range((n + 1) // 2)]
        cards = [ids.new("c") for _ in range(n + 1)]
        gateways = [_ip(rr) for _ in range(rr.randint(1, 2))]
        span = rr.uniform(2, 6) * DAY_MS
        cur = rr.choice(CURRENCIES)
        out = []
        for i in range(n):
            u = {"id": ids.new("u"), "cur": cur, "cards": [cards[i]]}
            t = int(rr.random() * span / 2)
            for k in range(rr.randint(2, 4)):
                card = cards[i + (k % 2)]  # the chain: this account's card and the next account's
                amt = round(rr.lognormvariate(3.8, 0.8), 2)  # ordinary orders by aged accounts (no signup)
                steps = [("login", 0.0), ("place_order", amt, card), ("payment", amt, card)]
                sess = self._sessionize(rr, u, devices[i // 2], rr.choice(gateways), steps, 10_000, 120_000)
                out += [(t + o, *rest) for o, *rest in sess]
                t += int(rr.uniform(0.2, 1.0) * span / 2)
        return sorted(out, key=lambda x: x[0])

    @staticmethod
    def _sessionize(r, u, device, ip, steps, lo, hi) -> list:
        """Steps are (event type, amount) or (event type, amount, card); the default card is the user's
        newest."""
        out, t = [], 0
        cards = u.get("cards") or [None]
        for i, (et, amt, *card) in enumerate(steps):
            if i:
                t += r.randint(lo, hi)
            out.append((t, et, u["id"], device, ip, round(amt, 2), u["cur"], card[0] if card else cards[-1]))
        return out

    def _fraud(self, scenario: str, r: random.Random, ids: _Ids, users: list) -> list:
        if scenario == "card_testing":
            if users and r.random() < 0.5:
                u = r.choice(users)
            else:
                u = {"id": ids.new("u"), "devices": [], "ip": ids.ip(), "cur": r.choice(CURRENCIES)}
            device, ip = ids.new("d"), ids.ip()
            steps = [("add_payment_method" if r.random() < 0.35 else "payment", round(r.uniform(0.5, 5), 2),
                      ids.new("c")) for _ in range(r.randint(10, 24))]
            if not u["devices"]:
                steps.insert(0, ("signup", 0.0))
            return self._sessionize(r, u, device, ip, steps, 1_500, 9_000)
        if scenario == "account_takeover":
            old = [u for u in users if len(u["devices"]) >= 1]
            u = r.choice(old) if old else {"id": ids.new("u"), "devices": [ids.new("d")], "ip": ids.ip(),
                                           "cur": "EUR"}
            device, ip, card = ids.new("d"), ids.ip(), ids.new("c")  # the fraudster's own card
            big = round(r.uniform(400, 3000), 2)
            steps = [("login", 0.0), ("add_payment_method", 0.0, card), ("place_order", big, card),
                     ("payment", big, card)]
            if r.random() < 0.6:
                big2 = round(r.uniform(300, 2500), 2)
                steps += [("place_order", big2, card), ("payment", big2, card)]
            return self._sessionize(r, u, device, ip, steps, 4_000, 45_000)
        if scenario == "promo_ring":
            device, ip, card = ids.new("d"), ids.ip(), ids.new("c")
            out, t = [], 0
            for _ in range(r.randint(5, 12)):
                u = {"id": ids.new("u"), "devices": [device], "ip": ip, "cur": r.choice(CURRENCIES), "cards": [card]}
                amt = round(r.uniform(15, 70), 2)
                sess = self._sessionize(r, u, device, ip, [("signup", 0.0), ("promo_redeem", 0.0),
                                                           ("place_order", amt), ("payment", amt)], 5_000, 30_000)
                out += [(t + o, *rest) for o, *rest in sess]
                t += sess[-1][0] + r.randint(20_000, 150_000)
            return out
        if scenario == "compromised_device":
            device, ip = ids.new("d"), ids.ip()
            out = []
            span = r.uniform(7, 28) * DAY_MS
            for _ in range(r.randint(4, 10)):  # shoppers who happen to use the compromised device
                u = r.choice(users) if users else {"id": ids.new("u"), "devices": [], "ip": ip, "cur": "EUR",
                                                   "cards": [ids.new("c")]}
                amt = round(r.lognormvariate(3.8, 0.8), 2)
                steps = [("login", 0.0), ("place_order", amt), ("payment", amt)]
                start = int(r.random() * span)
                out += [(start + o, *rest) for o, *rest in self._sessionize(r, u, device, ip, steps, 10_000, 180_000)]
            return sorted(out, key=lambda x: x[0])
        if scenario == "slow_card_testing":
            if users and r.random() < 0.5:
                u = r.choice(users)
            else:
                u = {"id": ids.new("u"), "devices": [], "ip": ids.ip(), "cur": r.choice(CURRENCIES)}
            device, ip = ids.new("d"), ids.ip()
            out = [] if u["devices"] else [(0, "signup", u["id"], device, ip, 0.0, u["cur"], None)]
            for _ in range(r.randint(1, 3)):
                card = ids.new("c")
                for day in range(r.randint(5, 8)):
                    for _ in range(r.randint(1, 2)):
                        t = day * DAY_MS + r.randint(600_000, DAY_MS - 600_000)
                        out.append((t, "payment", u["id"], device, ip, round(r.uniform(0.5, 5), 2), u["cur"], card))
            return sorted(out, key=lambda x: x[0])
        if scenario == "fresh_account_big_order":
            u = {"id": ids.new("u"), "devices": [ids.new("d")], "ip": ids.ip(), "cur": r.choice(CURRENCIES),
                 "cards": [ids.new("c")]}
            big = round(r.uniform(800, 4000), 2)
            steps = [("signup", 0.0), ("place_order", big), ("payment", big)]
            return self._sessionize(r, u, u["devices"][0], u["ip"], steps, 15_000, 240_000)
        raise ValueError(f"unknown scenario {scenario!r}")

    def _malformed(self, r: random.Random, ev: dict) -> tuple[bytes, str]:
        kind = r.randrange(6)
        if kind == 0:
            return orjson.dumps(ev)[:-7], "invalid_json"
        if kind == 1:
            return b"\xff\xfe" + orjson.dumps(ev)[2:], "invalid_utf8"
        if kind == 2:
            return orjson.dumps({**ev, "amount": "12.50"}), "wrong_type"
        if kind == 3:
            return orjson.dumps({k: v for k, v in ev.items() if k != "user_id"}), "missing_field"
        if kind == 4:
            return orjson.dumps({**ev, "amount": -5.0}), "invalid_amount"
        return orjson.dumps({**ev, "event_type": "teleport"}), "unknown_event_type"

    def generate(self, n: int) -> Iterator[Labelled]:
        """Yield exactly ``n`` records in emission order (a fixed function of the seed and parameters)."""
        r = random.Random(self.seed)
        delays = random.Random(self.seed * 7919 + 17)  # label delays: a stream of their own
        ids = _Ids(r, self.seed)
        # an established customer base: ~1 customer per 4 events, so a shopper has a session or two
        users: list[dict] = [
            {"id": ids.new("u"), "devices": [ids.new("d") for _ in range(1 + (r.random() < 0.3))],
             "ip": ids.ip(), "cur": r.choice(CURRENCIES), "cards": [ids.new("c")]}
            for _ in range(max(50, n // 4))
        ]
        span = max(1, int(self.days * DAY_MS if self.days else n / self.sim_rate * 1000))
        scenarios = ALL_SCENARIOS if self.days else SCENARIOS
        if self.rings:  # a stream of its own: the draws above and below are as without rings
            self._rr = rr = random.Random(self.seed * 104_729 + 3)
            self._offices = [_ip(rr) for _ in range(max(3, n // 1500))]
            self._wifi = [_ip(rr) for _ in range(3)]
            for u in users:
                self._office(u)
        heap: list = []
        produced, seq = 0, 0
        # schedule sessions until enough events exist; sessions start uniformly over the simulated span
        while produced < n:
            start = self.start_ts + int(r.random() * span)
            if self._rr is not None and self._rr.random() < RING_RATE:
                scenario, steps = RING_SCENARIO, self._ring(ids)
            elif r.random() < self.fraud_share / 4.0:  # fraud sessions hold ~4x the events of normal ones
                scenario = r.choice(scenarios)
                steps = self._fraud(scenario, r, ids, users)
            else:
                scenario = NORMAL
                steps = self._normal(r, ids, users)
            for off, et, uid, dev, ip, amt, cur, card in steps:
                ts = start + off
                if self.days and ts >= self.start_ts + span:  # a slow scenario's tail past the traffic's end
                    continue
                seq += 1
                emit_at = ts + r.randint(0, self.max_disorder_ms)  # delivery delay -> bounded disorder
                ev = {"event_id": ids.new("e"), "event_type": et, "user_id": uid, "device_id": dev, "ip": ip,
                      "amount": amt, "currency": cur, "ts": ts}
                if card is not None and et in PAYMENT_REF_TYPES:
                    ev["payment_ref"] = card
                heapq.heappush(heap, (emit_at, seq, ev, scenario))
                produced += 1
        out = 0
        while heap and out < n:
            _, _, ev, scenario = heapq.heappop(heap)
            label = {"event_id": ev["event_id"], "scenario": scenario, "fraud": scenario != NORMAL,
                     "user_id": ev["user_id"], "device_id": ev["device_id"], "ts": ev["ts"],
                     "ip": ev["ip"], "arrival_ts": ev["ts"] + delays.randint(*LABEL_DELAY_MS)}
            if "payment_ref" in ev:
                label["payment_ref"] = ev["payment_ref"]
            if self.bad_share and r.random() < self.bad_share:
                raw, reason = self._malformed(r, ev)
                label = {**label, "scenario": MALFORMED, "fraud": False, "expected_reason": reason}
                yield Labelled(ev["user_id"], None, raw, label)
            else:
                yield Labelled(ev["user_id"], ev, None, label)
            out += 1
