"""The review service's working day: the workflow's rules and label semantics (pure functions), priority and
due time, per-feature contributions against a brute-force Shapley computation scored by onnxruntime, the
schema migration of a store made by the previous release's code, and the pages (claim, next case,
escalate, snooze, approval of an overturned block, reopen and a corrected label, notes, bulk verdicts,
search, entity pages, paging, roles) through Flask's test client on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import itertools
import re
import subprocess
import sys
from math import factorial
from pathlib import Path

import numpy as np
import orjson
import pytest

from riskstream.tools.review import explain, workflow
from riskstream.tools.review.store import Store, StoreError, now_ms
from riskstream.tools.review.web import WebSettings, create_app, fmt_num
from riskstream.tools.review.workflow import WorkflowError, decide
from tests.test_review import XSS, decision, event, feed

ROOT = Path(__file__).resolve().parents[1]
MAIN_COMMIT = "d1e46e6"  # the last release's store (schema version 1), for the migration test
PW = "correct horse battery"
HOUR = 3600_000


# -- the workflow as plain functions ---------------------------------------------------------------------

def step(action, **kw):
    args = dict(kind="review", status="open", owner=None, proposed_by=None, proposed=None, user="ana",
                role="analyst", last_label=None, last_revision=0)
    args.update(kw)
    return decide(action, **args)


def refused(code, action, **kw):
    with pytest.raises(WorkflowError) as e:
        step(action, **kw)
    assert e.value.status == code, str(e.value)
    return str(e.value)


def test_which_steps_send_a_label():
    # fraud and legit close and label; inconclusive closes without one; escalate and snooze send nothing
    assert step("fraud") == workflow.Step("closed", "fraud", owner="ana", keep_owner=False, label=("fraud", 1))
    assert step("legit").label == ("legit", 1)
    s = step("inconclusive")
    assert (s.status, s.verdict, s.label) == ("closed", "inconclusive", None)
    assert (step("escalate").status, step("escalate").label) == ("escalated", None)
    assert (step("snooze").status, step("snooze").label) == ("snoozed", None)
    # reopen (a lead's) sends nothing; closing again with the same verdict sends nothing, the other one a
    # correction with the next revision; inconclusive after a reopen leaves the label standing
    assert step("reopen", status="closed", role="lead").label is None
    refused(403, "reopen", status="closed")
    assert step("fraud", last_label="fraud", last_revision=1).label is None
    assert step("legit", last_label="fraud", last_revision=1).label == ("legit", 2)
    assert step("fraud", last_label="legit", last_revision=2).label == ("fraud", 3)
    assert step("inconclusive", last_label="fraud", last_revision=1).label is None


def test_overturning_a_block_needs_a_second_person():
    s = step("legit", kind="block")
    assert (s.status, s.proposed, s.label) == ("approval", "legit", None)
    assert step("fraud", kind="block").label == ("fraud", 1)  # confirming a block needs no approval
    pending = dict(kind="block", status="approval", proposed_by="ana", proposed="legit", owner="ana")
    refused(403, "approve", user="bob", **pending)  # an analyst cannot approve
    assert "not the analyst who proposed" in refused(403, "approve", user="ana", role="lead", **pending)
    ok = step("approve", user="lea", role="lead", **pending)
    assert (ok.status, ok.verdict, ok.label) == ("closed", "legit", ("legit", 1))
    back = step("reject", user="lea", role="lead", **pending)
    assert (back.status, back.label, back.owner) == ("open", None, "ana")
    refused(409, "fraud", **pending)  # nothing else happens to it meanwhile
    # a reopened block already labelled legit: legit again sends nothing, so needs no approval
    assert step("legit", kind="block", last_label="legit", last_revision=1).status == "closed"


def test_claims_and_escalations():
    assert step("claim").owner == "ana"
    assert "claimed by bob" in refused(409, "claim", owner="bob")
    assert "claimed by bob" in refused(409, "fraud", owner="bob")
    assert step("fraud", owner="bob", user="lea", role="lead").label == ("fraud", 1)  # a lead may
    refused(403, "assign", assignee="bob")
    assert step("assign", role="lead", assignee="bob").owner == "bob"
    refused(403, "fraud", status="escalated")
    assert step("fraud", status="escalated", role="lead").status == "closed"
    refused(409, "escalate", status="escalated", role="lead")
    refused(409, "fraud", status="closed")
    refused(400, "delete")
    # a snooze ends by itself
    assert workflow.effective_status("snoozed", 1000, 999) == "snoozed"
    assert workflow.effective_status("snoozed", 1000, 1000) == "open"


def test_priority_and_due_time():
    t0 = 1_767_225_600_000
    assert workflow.due_at("review", t0, 0.6, 100.0) == t0 + 4 * HOUR
    assert workflow.due_at("review", t0, 0.95, 100.0) == t0 + 2 * HOUR
    assert workflow.due_at("review", t0, 0.95, 5000.0) == t0 + 1 * HOUR
    assert workflow.due_at("block", t0, 0.99, None) == t0 + 12 * HOUR
    assert workflow.due_at("review", None, 0.6, 1.0) is None
    due = t0 + 4 * HOUR
    # 50 x score + 25 x min(1, log10(1 + amount) / 4) + 25 x share of the time to due gone
    assert workflow.priority(0.6, 999.0, t0, due, t0) == round(30 + 25 * 3 / 4)
    assert workflow.priority(0.6, 999.0, t0, due, t0 + 2 * HOUR) == round(30 + 18.75 + 12.5)
    assert workflow.priority(1.0, 1e6, t0, due, t0 + 10 * HOUR) == 100
    assert workflow.priority(None, None, None, None, t0) == 0
    assert not workflow.breached(due, due) and workflow.breached(due, due + 1) and not workflow.breached(None, due)


def test_numbers_are_rounded_for_reading():
    assert [fmt_num(v) for v in (19.060000000000002, 3.0, 1234567.0, 0.000123456, 0.99984, None)] == \
        ["19.06", "3", "1,234,567", "0.0001235", "0.9998", "-"]


# -- contributions: baseline Shapley over the model's trees against a brute force -----------------------

def raw_margin_session(path: Path):
    """onnxruntime on the model with its logistic removed: the positive class's raw margin, computed by
    onnxruntime's own tree code (independent of the walk in explain.py)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    for a in m.graph.node[0].attribute:
        if a.name == "post_transform":
            a.s = b"NONE"
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda rows: s.run(None, {s.get_inputs()[0].name: np.asarray(rows, dtype=np.float32)})[1][:, 1]


@pytest.fixture(scope="module")
def v2():
    pytest.importorskip("onnx")
    path = explain.MODELS_DIR / "risk_gbdt_v2.onnx"
    model, ref = explain.load("risk_gbdt_v2")
    b = np.array([ref["features"][n]["median"] for n in ref["feature_names"]], dtype=np.float32)
    return path, model, ref, b


def case_vector(ref, b, rng, k):
    """A vector that differs from the reference in ``k`` features (drawn around each feature's usual range)."""
    x = b.copy()
    idx = rng.choice(len(b), size=k, replace=False)
    for i in idx:
        f = ref["features"][ref["feature_names"][i]]
        lo, hi = f["p05"], f["p95"]
        x[i] = rng.choice([lo, hi, hi * 3 + 1, (lo + hi) / 2 + 0.5])
    return x, sorted(int(i) for i in idx)


def test_the_tree_walk_scores_like_onnxruntime(v2):
    import onnxruntime as ort

    path, model, ref, b = v2
    rng = np.random.default_rng(7)
    rows = np.array([case_vector(ref, b, rng, 20)[0] for _ in range(200)])
    probs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"X": rows.astype(np.float32)})[1][:, 1]
    ours = np.array([model.probability(r) for r in rows])
    assert np.max(np.abs(ours - probs)) < 2e-6
    assert probs.std() > 0.05  # the rows really differ in score


def test_contributions_equal_a_brute_force_shapley_computation(v2):
    """Every subset of the k features where the case and the reference differ, scored by onnxruntime; the
    Shapley formula over them; equal to the walk's values (and 0 for the features that do not differ)."""
    path, model, ref, b = v2
    margin = raw_margin_session(path)
    rng = np.random.default_rng(11)
    checked = 0
    for k in (1, 4, 9, 11):
        x, idx = case_vector(ref, b, rng, k)
        subsets = list(itertools.product((0, 1), repeat=k))
        rows = np.repeat(b[None, :], len(subsets), axis=0)
        for r, mask in enumerate(subsets):
            for j, on in zip(idx, mask):
                if on:
                    rows[r, j] = x[j]
        v = dict(zip(subsets, margin(rows).astype(np.float64)))
        brute = np.zeros(len(b))
        for pos, i in enumerate(idx):
            for mask, val in v.items():
                if mask[pos]:
                    continue
                size = sum(mask)
                with_i = mask[:pos] + (1,) + mask[pos + 1:]
                brute[i] += factorial(size) * factorial(k - size - 1) / factorial(k) * (v[with_i] - val)
        phi = model.shapley(x, b)
        assert np.max(np.abs(phi - brute)) < 1e-4, (k, idx, phi[idx], brute[idx])
        assert abs(phi.sum() - (model.margin(x) - model.margin(b))) < 1e-9  # efficiency
        checked += int(np.count_nonzero(np.abs(brute) > 1e-3))
    assert checked >= 5  # the features mattered: not a comparison of zeros


def test_a_case_page_shows_contributions_with_value_and_usual_range(tmp_path, v2):
    _, model, ref, b = v2
    x = b.copy()
    names = ref["feature_names"]
    x[names.index("device_distinct_users_1h")] = 6
    x[names.index("amount")] = 1234.5
    rec = decision(1, model_version="risk_gbdt_v2", features={n: float(v) for n, v in zip(names, x)})
    got = explain.contributions(rec)
    assert abs(sum(r["logodds"] for r in got["rows"]) - (got["margin"] - got["reference_margin"])) < 1e-9
    assert abs(sum(r["points"] for r in got["rows"]) - 100 * (got["score"] - got["reference_score"])) < 1e-6
    top = got["rows"][0]
    assert top["name"] in ("device_distinct_users_1h", "amount") and top["unusual"]
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.add_user("ana", PW)
    feed(store, "d", [rec])
    c = signed_in(store, "ana")
    page = c.get("/cases/1").get_data(as_text=True)
    row = re.search(r'<tr class="(up|down)" data-feature="%s">(.*?)</tr>' % top["name"], page, re.S).group(2)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    f = ref["features"][top["name"]]
    assert cells[0] == fmt_num(top["value"]) and cells[1] == f"{fmt_num(f['p05'])} – {fmt_num(f['p95'])}"
    assert cells[3] == "%+.3f" % top["logodds"]
    assert "19.060000000000002" not in page


# -- migration of a store made by the previous release ---------------------------------------------------

def old_store_module(tmp: Path):
    """riskstream/tools/review/store.py as of the last release (git), imported on its own."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{MAIN_COMMIT}:riskstream/tools/review/store.py"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout with the previous release's commit")
    path = tmp / "old_review_store.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_review_store", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_review_store"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_a_store_of_the_previous_release_is_migrated(url, tmp_path):
    old = old_store_module(tmp_path)
    s = old.Store(url)
    assert "schema_version" not in {r[0] for r in s.query("SELECT name FROM meta")}
    recs = [old.Consumed("e", 0, k, orjson.dumps(o)) for k, o in enumerate(
        [event(1, currency="USD", amount=1500.0), event(2)])]
    s.ingest(recs, {("e", 0): 2}, {"decisions": "d", "events": "e", "control": "c"})
    recs = [old.Consumed("d", 0, k, orjson.dumps(o)) for k, o in enumerate(
        [decision(1, payment_ref="c-1"), decision(2, "block", score=0.97), decision(3)])]
    s.ingest(recs, {("d", 0): 3}, {"decisions": "d", "events": "e", "control": "c"})
    s.add_user("ana", PW)
    label = s.close_case(1, "fraud", "ring", "ana")
    s.label_sent(1, 0, 41)
    s.close()

    store = Store(url)
    assert store.schema_version() == Store.SCHEMA_VERSION == 3
    c1, c2 = store.case(1), store.case(2)
    assert (c1["ip"], c1["payment_ref"], c1["amount"], c1["currency"]) == ("1.2.3.4", "c-1", 1500.0, "USD")
    assert c1["due_at"] == c1["decided_at"] + 4 * HOUR // 2  # 1,500: halved
    assert c2["due_at"] == c2["decided_at"] + 24 * HOUR // 2 and c2["currency"] == "EUR"
    (row,) = store.case_label_history(1)
    assert (row["revision"], row["label"], row["sent_part"], row["sent_offset"]) == (1, "fraud", 0, 41)
    assert orjson.loads(row["body"]) == label and not store.pending_labels()
    assert tuple(store.one("SELECT role, timezone FROM users WHERE username = 'ana'")) == ("analyst", "UTC")
    assert [r["action"] for r in store.audit_trail()] == ["label_sent", "verdict", "add_user"]  # the trail kept
    # the workflow on the migrated store: reopen, correct; the correction goes out after the original
    store.act(1, "reopen", "lea", "lead")
    store.close_case(1, "legit", "", "ana")
    (pending,) = store.pending_labels()
    assert (pending["revision"], orjson.loads(pending["body"])["label"]) == (2, "legit")
    assert Store(url).migrate() == []  # a second start changes nothing
    store.close()


# -- the pages ---------------------------------------------------------------------------------------

@pytest.fixture
def store(url):
    s = Store(url)
    for name, role in (("ana", "analyst"), ("bob", "analyst"), ("lea", "lead")):
        s.add_user(name, PW, role=role)
    yield s
    s.close()


def signed_in(store, user):
    c = create_app(store, WebSettings()).test_client()
    page = c.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = c.post("/login", data={"csrf_token": token, "username": user, "password": PW, "next": "/"})
    assert r.status_code == 303
    c.csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/").get_data(as_text=True)).group(1)
    return c


def post(c, path, **data):
    return c.post(path, data={"csrf_token": c.csrf, **data})


def labels(store):
    return [(r["case_id"], r["revision"], orjson.loads(r["body"])["label"]) for r in
            store.query("SELECT * FROM label_outbox ORDER BY id")]


def test_claim_verdict_and_next_case(store):
    feed(store, "d", [decision(i, score=s) for i, s in ((1, 0.6), (2, 0.95), (3, 0.7))])
    ana, bob = signed_in(store, "ana"), signed_in(store, "bob")
    # next case: the one due first (the 0.95 score halves its time), claimed, its owner visible
    r = post(ana, "/next")
    assert r.headers["Location"] == "/cases/2"
    assert re.search(r'id="owner">ana<', bob.get("/cases/2").get_data(as_text=True))
    assert 'class="owner">ana<' in bob.get("/").get_data(as_text=True)
    # bob cannot decide or claim ana's case; his next case is another one
    assert post(bob, "/cases/2/verdict", verdict="fraud").status_code == 409
    assert post(bob, "/cases/2/act", action="claim").status_code == 409
    assert post(bob, "/next").headers["Location"] == "/cases/1"
    # ana's verdict takes her to her next case, claimed
    r = post(ana, "/cases/2/verdict", verdict="fraud", note="ring")
    assert r.status_code == 303 and r.headers["Location"] == "/cases/3?done=2&status=closed"
    assert store.case(3)["owner"] == "ana" and store.case(2)["status"] == "closed"
    assert "Case 2 closed; this is your next case." in ana.get(r.headers["Location"]).get_data(as_text=True)
    post(ana, "/cases/3/verdict", verdict="legit")
    assert post(ana, "/next").headers["Location"] == "/?empty=1"
    assert labels(store) == [(2, 1, "fraud"), (3, 1, "legit")]
    # release and assign
    assert post(bob, "/cases/1/act", action="release").status_code == 303 and store.case(1)["owner"] is None
    assert post(bob, "/cases/1/act", action="assign", assignee="ana").status_code == 403
    lea = signed_in(store, "lea")
    assert post(lea, "/cases/1/act", action="assign", assignee="bob").status_code == 303
    assert store.case(1)["owner"] == "bob"
    assert post(lea, "/cases/1/act", action="assign", assignee="nobody").status_code == 400


def test_escalate_snooze_reopen_and_a_corrected_label(store):
    feed(store, "d", [decision(1), decision(2)])
    ana, lea = signed_in(store, "ana"), signed_in(store, "lea")
    assert post(ana, "/cases/1/act", action="escalate", note="looks like an ATO").status_code == 303
    assert store.case(1)["status"] == "escalated"
    assert post(ana, "/cases/1/verdict", verdict="fraud").status_code == 403
    assert "/cases/1" in post(lea, "/next").headers["Location"]  # a lead's next: the escalated case
    assert post(lea, "/cases/1/verdict", verdict="fraud").status_code == 303
    assert labels(store) == [(1, 1, "fraud")]
    # snooze: out of the queue until the time, nothing sent
    assert post(ana, "/cases/2/act", action="snooze", until="2000-01-01T00:00").status_code == 400
    assert post(ana, "/cases/2/act", action="snooze", until="junk").status_code == 400
    until = now_ms() + 2 * HOUR
    import time as _t
    stamp = _t.strftime("%Y-%m-%dT%H:%M", _t.gmtime(until / 1000))
    assert post(ana, "/cases/2/act", action="snooze", until=stamp).status_code == 303
    assert store.case(2)["status"] == "snoozed" and store.case(2)["snooze_until"] == until // 60000 * 60000
    assert 'href="/cases/2"' not in ana.get("/").get_data(as_text=True)
    assert 'href="/cases/2"' in ana.get("/?view=snoozed&kind=all").get_data(as_text=True)
    store.conn().execute("UPDATE cases SET snooze_until = ? WHERE case_id = 2", (now_ms() - 1,))
    assert 'href="/cases/2"' in ana.get("/").get_data(as_text=True)  # its time came: open again
    # reopen: leads only; sends nothing; the same verdict again sends nothing, the other one a correction
    assert post(ana, "/cases/1/act", action="reopen").status_code == 403
    assert post(lea, "/cases/1/act", action="reopen", note="chargeback says otherwise").status_code == 303
    assert store.case(1)["status"] == "open" and labels(store) == [(1, 1, "fraud")]
    assert post(ana, "/cases/1/verdict", verdict="fraud").status_code == 303
    assert labels(store) == [(1, 1, "fraud")]
    post(lea, "/cases/1/act", action="reopen")
    assert post(ana, "/cases/1/verdict", verdict="legit").status_code == 303
    assert labels(store) == [(1, 1, "fraud"), (1, 2, "legit")]
    body = orjson.loads(store.pending_labels()[-1]["body"])
    assert body["revision"] == 2 and body["label"] == "legit" and body["event_id"] == "e1"
    # inconclusive sends nothing
    post(lea, "/cases/1/act", action="reopen")
    assert post(ana, "/cases/1/verdict", verdict="inconclusive").status_code == 303
    assert len(labels(store)) == 2 and store.case(1)["verdict"] == "inconclusive"
    # the notes thread holds every step's note, in order
    notes = [(n["author"], n["kind"], n["body"]) for n in store.notes(1)]
    assert notes == [("ana", "escalate", "looks like an ATO"), ("lea", "reopen", "chargeback says otherwise")]


def test_a_lead_approves_an_overturned_block(store):
    feed(store, "d", [decision(1, "block", score=0.97)])
    ana, bob, lea = signed_in(store, "ana"), signed_in(store, "bob"), signed_in(store, "lea")
    assert post(ana, "/cases/1/verdict", verdict="legit", note="customer called").status_code == 303
    assert store.case(1)["status"] == "approval" and labels(store) == []
    page = lea.get("/?view=approval&kind=all").get_data(as_text=True)
    assert 'href="/cases/1"' in page
    assert post(bob, "/cases/1/act", action="approve").status_code == 403  # an analyst cannot
    assert post(lea, "/next").headers["Location"] == "/cases/1"
    assert 'id="act-approve"' in lea.get("/cases/1").get_data(as_text=True)
    assert post(lea, "/cases/1/act", action="approve").status_code == 303
    c = store.case(1)
    assert (c["status"], c["verdict"], c["analyst"]) == ("closed", "legit", "ana")
    assert labels(store) == [(1, 1, "legit")]
    # a lead's own overturn needs another person too
    feed(store, "d", [decision(2, "block", score=0.97)], start=1)
    post(lea, "/cases/2/verdict", verdict="legit")
    assert post(lea, "/cases/2/act", action="approve").status_code == 403
    actions = [r["action"] for r in store.audit_trail()]
    assert actions.count("approve") == 1


def test_bulk_verdict_on_a_user_one_label_each(store):
    burst = [decision(i, user_id="ring-u", device_id=f"d{i}", payment_ref="card-9") for i in range(1, 11)]
    feed(store, "d", burst + [decision(11, user_id="other"), decision(12, "block", score=0.99, user_id="ring-u")])
    ana, bob = signed_in(store, "ana"), signed_in(store, "bob")
    post(bob, "/cases/3/act", action="claim")  # bob's claim is left alone
    r = post(ana, "/entity/user/bulk?id=ring-u", verdict="fraud", note="card testing")
    assert r.status_code == 303
    summary = ana.get(r.headers["Location"]).get_data(as_text=True)
    assert "10 closed fraud, 0 awaiting approval, 1 skipped" in summary
    got = labels(store)
    assert sorted(c for c, _, _ in got) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 12] and {lb for _, _, lb in got} == {"fraud"}
    assert store.case(3)["status"] == "open" and store.case(11)["status"] == "open"
    # the user's decision history shows each case's verdict, linked; bob's case still open
    page = ana.get("/entity/user?id=ring-u").get_data(as_text=True)
    assert '<a href="/cases/1">#1</a> fraud' in page and '<a href="/cases/3">#3</a> open' in page
    assert '<a href="/cases/1">#1</a> fraud' in ana.get("/cases/2").get_data(as_text=True)  # "this user's"
    # again: nothing is open any more, nothing more is sent
    post(ana, "/entity/user/bulk?id=ring-u", verdict="fraud")
    assert len(labels(store)) == 10
    # on a card: bob's case; a legit on a block would await approval
    assert post(bob, "/entity/card/bulk?id=card-9", verdict="legit").status_code == 303
    assert labels(store)[-1] == (3, 1, "legit")
    assert post(ana, "/entity/user/bulk?id=ring-u", verdict="maybe").status_code == 400
    assert post(ana, "/entity/planet/bulk?id=x", verdict="fraud").status_code == 404


def test_search_entity_pages_and_paging(store):
    feed(store, "e", [event(1, currency="USD", amount=1500.0, user_id="u-a")])
    feed(store, "d", [decision(1, ip="9.9.9.9", payment_ref="card-1", user_id="u-a", device_id="dev-a"),
                      decision(2, "allow", ip="9.9.9.9", user_id="u-b", device_id="dev-a"),
                      *[decision(i) for i in range(3, 60)]])
    ana = signed_in(store, "ana")

    def ids(page):
        return re.findall(r'data-case-id="(\d+)"', page)

    for q in ("9.9.9.9", "card-1", "e1", "u-a", "dev-a"):
        page = ana.get(f"/search?q={q}").get_data(as_text=True)
        assert ids(page) == ["1"], q
    page = ana.get("/search?q=9.9.9.9").get_data(as_text=True)
    assert "ip 9.9.9.9</a>: 2 decisions, 1 cases" in page
    assert ids(ana.get("/search?q=nothing-like-it").get_data(as_text=True)) == []
    # the ip's page: its decisions, its case, and the users and devices seen with it, as links
    page = ana.get("/entity/ip?id=9.9.9.9").get_data(as_text=True)
    assert 'href="/entity/user?id=u-a"' in page and 'href="/entity/user?id=u-b"' in page
    assert 'href="/entity/device?id=dev-a" class="link-device">dev-a</a> (3)' in page  # 2 decisions + 1 case
    assert ids(page) == ["1"]
    # amount, currency and event time in the queue
    q = ana.get("/").get_data(as_text=True)
    assert "1,500 USD" in q and "2026-01-01 00:00:00 UTC" in q
    # paging: 58 open reviews, 50 a page
    first, second = ana.get("/").get_data(as_text=True), ana.get("/?page=2").get_data(as_text=True)
    assert len(ids(first)) == 50 and len(ids(second)) == 8 and not set(ids(first)) & set(ids(second))
    assert 'id="total">58<' in first and 'id="next-page"' in first and 'id="next-page"' not in second
    assert ids(ana.get("/?page=2&per=20&sort=score").get_data(as_text=True)) != []
    for bad in ("/?page=0", "/?page=x", "/?per=1000", "/?view=nope", "/entity/ip", "/entity/ip?id=" + "x" * 300):
        assert ana.get(bad).status_code == 400, bad


def test_roles_and_the_audit_trail(store):
    ana, lea = signed_in(store, "ana"), signed_in(store, "lea")
    assert ana.get("/audit").status_code == 403 and 'id="nav-audit"' not in ana.get("/").get_data(as_text=True)
    assert lea.get("/audit").status_code == 200 and 'id="nav-audit"' in lea.get("/").get_data(as_text=True)
    store.set_role("ana", "admin", by="test")
    assert ana.get("/").status_code == 303  # her sessions ended with the change
    assert signed_in(store, "ana").get("/audit").status_code == 200
    with pytest.raises(StoreError):
        store.set_role("ana", "root")


def test_every_new_form_needs_the_csrf_token_and_strings_are_escaped(store):
    bidi = "u\u202eexe.png"
    feed(store, "d", [decision(1, user_id=f"u{XSS}"[:100], ip=XSS[:60], payment_ref=bidi)])
    ana = signed_in(store, "ana")
    for path, data in (("/next", {}), ("/cases/1/act", {"action": "claim"}), ("/cases/1/notes", {"note": "x"}),
                       ("/entity/user/bulk?id=u", {"verdict": "fraud"})):
        assert ana.post(path, data=data).status_code == 403, path
        assert ana.post(path, data={**data, "csrf_token": "forged"}).status_code == 403, path
        assert ana.post(path, data={**data, "csrf_token": ana.csrf},
                        headers={"Origin": "http://evil.example"}).status_code == 403, path
    assert store.case(1)["owner"] is None and not store.notes(1)
    assert post(ana, "/cases/1/notes", note=XSS).status_code == 303
    from urllib.parse import quote

    for path in ("/", "/cases/1", "/search?q=" + quote(bidi), "/entity/card?id=" + quote(bidi),
                 "/entity/ip?id=" + quote(XSS[:60]), "/entity/user?id=" + quote(f"u{XSS}"[:100])):
        page = ana.get(path).get_data(as_text=True)
        assert "<script>window" not in page and "<img src=x" not in page, path
        assert "\u202e" not in page, path
    assert "u&lt;U+202E&gt;exe.png" in ana.get("/entity/card?id=" + quote(bidi)).get_data(as_text=True)
    # the bulk form posts the entity's real id (in its URL, encoded), not the neutralised display text
    page = ana.get("/entity/card?id=" + quote(bidi)).get_data(as_text=True)
    assert 'action="/entity/card/bulk?id=u%E2%80%AEexe.png"' in page
    assert post(ana, "/entity/card/bulk?id=" + quote(bidi), verdict="fraud").status_code == 303
    assert store.case(1)["verdict"] == "fraud"


def test_review_cli_sets_roles(tmp_path, monkeypatch, capsys):
    import io

    from riskstream.cli import main

    db = f"sqlite:///{tmp_path / 'r.db'}"
    monkeypatch.setattr("sys.stdin", io.StringIO(PW + "\n"))
    assert main(["review", "add-user", "lea", "--role", "lead", "--password-stdin", "--db", db]) == 0
    assert main(["review", "user", "set-role", "lea", "--role", "admin", "--db", db]) == 0
    with pytest.raises(SystemExit, match="give --role"):
        main(["review", "user", "set-role", "lea", "--db", db])
    s = Store(db)
    assert [(u["username"], u["role"]) for u in s.users()] == [("lea", "admin")]
    assert [r["action"] for r in s.audit_trail()] == ["set_role", "add_user"]


def test_an_inconclusive_verdict_is_not_counted_in_the_agreement(store):
    feed(store, "d", [decision(1, score=0.6), decision(2, score=0.6), decision(3, score=0.2)])
    store.close_case(1, "fraud", "", "ana")
    store.close_case(2, "inconclusive", "", "ana")
    store.close_case(3, "fraud", "", "ana")
    assert store.metrics(0.5)["agreement"] == (1, 2)  # 1 agrees (0.6 fraud), 1 does not (0.2 fraud)


def test_times_are_shown_and_read_in_the_analysts_time_zone(store, tmp_path, monkeypatch, capsys):
    """An analyst in Tokyo sees the case's event time in Japan time and snoozes until a Tokyo time; UTC is the
    default; a zone this machine does not know is refused, from the CLI too."""
    import datetime as dt
    import io
    from zoneinfo import ZoneInfo

    from riskstream.cli import main

    ts = 1_767_225_600_000 + 3 * HOUR  # 2026-01-01 03:00 UTC = 12:00 in Tokyo
    feed(store, "d", [{**decision(1), "event_ts": ts}, decision(2)])
    ana = signed_in(store, "ana")
    assert "2026-01-01 03:00:00 UTC" in ana.get("/cases/1").get_data(as_text=True)
    store.set_timezone("ana", "Asia/Tokyo")
    page = ana.get("/cases/1").get_data(as_text=True)
    assert "2026-01-01 12:00:00 JST" in page and "until (Asia/Tokyo)" in page
    assert "Times are in your time zone (Asia/Tokyo" in ana.get("/").get_data(as_text=True)
    # a snooze "until" typed in Tokyo time is that instant
    until = dt.datetime.now(ZoneInfo("Asia/Tokyo")).replace(second=0, microsecond=0) + dt.timedelta(hours=3)
    assert post(ana, "/cases/2/act", action="snooze", until=until.strftime("%Y-%m-%dT%H:%M")).status_code == 303
    assert store.case(2)["snooze_until"] == int(until.timestamp() * 1000)
    with pytest.raises(StoreError, match="not a time zone"):
        store.set_timezone("ana", "Mars/Olympus")
    db = f"sqlite:///{tmp_path / 'tz.db'}"
    monkeypatch.setattr("sys.stdin", io.StringIO(PW + "\n"))
    assert main(["review", "add-user", "kai", "--timezone", "Europe/Paris", "--password-stdin", "--db", db]) == 0
    assert main(["review", "user", "set-timezone", "kai", "--timezone", "America/New_York", "--db", db]) == 0
    with pytest.raises(SystemExit, match="not a time zone"):
        main(["review", "user", "set-timezone", "kai", "--timezone", "UTC+1", "--db", db])
    assert [(u["username"], u["timezone"]) for u in Store(db).users()] == [("kai", "America/New_York")]


def test_a_case_page_shows_the_group_against_a_brute_force(store):
    """The case's group (two user-hops within the graph horizon before the event) equals a brute force over the
    decisions fed: events outside the window or after the event do not link, a hot ip lists its busiest users,
    a user with a case closed as fraud counts as fraud; the page shows it, escaped."""
    import random

    from udfs.features import GRAPH

    rng = random.Random(5)
    H = GRAPH["horizon_ms"]
    t0 = 1767225600000 + 10 * H
    devices, ips, cards = [f"d{k}" for k in range(12)], [f"10.0.0.{k}" for k in range(6)], [f"c{k}" for k in range(8)]
    decs = []
    for i in range(400):
        u = f"u{rng.randrange(40)}"
        ts = t0 - rng.randrange(-H // 7, 2 * H)  # some after the case's event, some before its window
        decs.append(decision(100 + i, kind="allow", user_id=u, device_id=rng.choice(devices), ip=rng.choice(ips),
                             payment_ref=rng.choice(cards + [None]), event_ts=ts, decided_at=ts + 5))
    hot = [decision(1000 + i, kind="allow", user_id=f"office{i}", device_id=f"od{i}", ip="10.9.9.9", event_ts=t0 - 1000,
                    decided_at=t0) for i in range(70)]
    case_dec = decision(1, kind="review", user_id="u1<b>", device_id="d1", ip="10.9.9.9", payment_ref="c1",
                        event_ts=t0, decided_at=t0 + 5)
    own = [decision(2000 + i, kind="allow", user_id="u1<b>", device_id=f"d{3 + i}", ip="10.0.0.1", payment_ref=None,
                    event_ts=t0 - 3600_000 * (i + 1), decided_at=t0) for i in range(3)]
    fraudster = decision(3000, kind="block", user_id="u7", device_id="d4", ip="10.0.0.5", event_ts=t0 - H + 10,
                         decided_at=t0 - H + 20, score=0.99)
    feed(store, "d", decs + hot + own + [fraudster, case_dec])
    case_id = store.one("SELECT case_id FROM cases WHERE user_id = 'u1<b>'")[0]
    fraud_case = store.one("SELECT case_id FROM cases WHERE user_id = 'u7'")[0]
    lea = signed_in(store, "lea")
    assert post(lea, f"/cases/{fraud_case}/verdict", verdict="fraud").status_code == 303

    # brute force over what was fed
    rows = decs + hot + own + [fraudster, case_dec]
    win = [d for d in rows if t0 - H <= d["event_ts"] <= t0]
    cols = {"device": "device_id", "ip": "ip", "card": "payment_ref"}
    mine = {(k, d[c]) for d in win if d["user_id"] == "u1<b>" for k, c in cols.items() if d[c] is not None}
    assert len(mine) <= store.GROUP_ENTITIES
    linked: dict[str, set] = {}
    for k, v in mine:
        others = {d["user_id"] for d in win if d[cols[k]] == v and d["user_id"] != "u1<b>"}
        for o in others:
            linked.setdefault(o, set()).add((k, v))
    g = store.group(store.case(case_id))
    assert {(e["kind"], e["value"]) for e in g["entities"]} == mine
    ip_entry = next(e for e in g["entities"] if e["value"] == "10.9.9.9")
    assert ip_entry["users"] == 70 and ip_entry["listed"] == store.GROUP_USERS and not g["complete"]
    listed = {u["user_id"]: set(u["via"]) for u in g["users"]}
    hot_listed = {u for u in listed if u.startswith("office")}
    assert len(hot_listed) == store.GROUP_USERS  # the hot ip lists only its busiest users
    assert {u: v for u, v in listed.items() if not u.startswith("office")} == {
        u: v for u, v in linked.items() if not u.startswith("office")}
    assert "u7" in listed
    for u in g["users"]:  # each linked user's decisions in the window, once however many entities it shares
        assert u["events"] == sum(1 for d in win if d["user_id"] == u["user_id"]), u
    fraud = {"u7"} & set(listed)
    assert {u["user_id"] for u in g["users"] if u["fraud"]} == fraud
    assert g["size"] == 1 + len(listed) and g["fraud_users"] == len(fraud)
    page = lea.get(f"/cases/{case_id}").get_data(as_text=True)
    assert f'id="group-size">{g["size"]}<' in page and "u1<b>" not in page and "u1&lt;b&gt;" in page
    assert page.count('href="/entity/user?id=') >= len(listed)
