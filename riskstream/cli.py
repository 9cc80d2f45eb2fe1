"""The ``riskstream`` command. Every job option is a flag with an environment-variable fallback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from . import paths
from .jobflags import add_job_flags, add_setting, env_or, job_config


def cmd_jars(a) -> int:
    from .ops.jars import build_jvm_module, resolve

    resolve(force=a.force)
    build_jvm_module(force=a.force)
    return 0


def cmd_stack(a) -> int:
    from . import topics
    from .ops import broker

    if a.action == "up":
        lay = broker.up(port=a.port, partitions=a.partitions)
        made = topics.ensure_topics(lay.bootstrap, topics.topic_specs(a.events_topic, a.decisions_topic,
                                                                      a.dead_letter_topic, a.partitions))
        print(f"[stack] topics created: {made or 'none (all exist)'}")
        print(f"[stack] bootstrap servers: {lay.bootstrap}")
    elif a.action == "down":
        broker.down()
    else:
        st = broker.status()
        print(orjson.dumps(st).decode() if a.json else "\n".join(f"{k}: {v}" for k, v in st.items()))
        return 0 if st["ready"] else 1
    return 0


def positive_days(text: str) -> float:
    """argparse type: a positive, finite number of days."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"the number of days must be positive, got {text}")
    return v


def cmd_generate(a) -> int:
    from .generator import TrafficGenerator
    from .kafka_io import produce, progress_printer

    gen = TrafficGenerator(seed=a.seed, bad_share=a.bad_share, fraud_share=a.fraud_share, days=a.days,
                           rings=a.rings)
    labels_path = Path(a.labels)
    labels_path.parent.mkdir(parents=True, exist_ok=True)

    def records():
        with open(labels_path, "wb") as lf:
            for r in gen.generate(a.count):
                lf.write(orjson.dumps(r.label) + b"\n")
                yield r

    if a.output:
        n = 0
        with open(a.output, "wb") as f:
            for r in records():
                f.write((r.raw if r.raw is not None else orjson.dumps(r.event)) + b"\n")
                n += 1
        print(f"[generate] wrote {n} events to {a.output}, labels to {labels_path}")
        return 0
    n = produce(a.bootstrap_servers, a.topic, records(), a.rate or None, a.count,
                progress_printer(a.count, "generate"))
    print(f"[generate] sent {n} events to {a.topic} on {a.bootstrap_servers}; labels in {labels_path}")
    return 0


def cmd_run(a) -> int:
    from .ops import runguard
    from .ops.errors import StartupError

    cfg = job_config(a)
    print(f"[run] {cfg.job_name}: {cfg.events_topic} -> {cfg.decisions_topic} / {cfg.dead_letter_topic} "
          f"on {cfg.bootstrap_servers}, parallelism {cfg.parallelism}", file=sys.stderr)
    try:  # a second start of a live job is refused before PyFlink is even imported (seconds on a busy host)
        runguard.claim(cfg.job_name, "riskstream run")  # run() below gets this process's claim back
    except StartupError as e:
        raise SystemExit(f"riskstream run: {e}")
    from pipelines import decision_job
    from udfs.scoring import ModelError

    try:
        decision_job.run(cfg, wait=True)  # preflight (model, jars, restore path, Kafka) runs first inside
    except (ModelError, FileNotFoundError, StartupError, ValueError) as e:
        raise SystemExit(f"riskstream run: {e}")
    return 0


def cmd_consume(a) -> int:
    from .tools.consume import consume

    return consume(a.bootstrap_servers, a.topic, follow=a.follow, decision=a.decision, limit=a.limit,
                   group_id=a.group_id, idle_ms=a.idle_ms)


DEMO_CHALLENGER = "models/risk_gbdt_v2.onnx"


def cmd_demo(a) -> int:
    from .tools import demo

    from .ops import broker

    from udfs.features import GRAPH_FEATURES

    cfg = job_config(a, starting_offsets="earliest")
    report_path = a.report or None
    broker_was_running = broker.status()["running"]
    challenger = (a.challenger or None) if not a.ab or a.challenger != DEMO_CHALLENGER else None
    if GRAPH_FEATURES and challenger == DEMO_CHALLENGER:  # the shipped challenger has the spec without them
        print("[demo] graph features on: no shadow challenger (the shipped one, risk_gbdt_v2, has the spec without "
              "them; --challenger names another)", file=sys.stderr, flush=True)
        challenger = None
    summary = demo.run_demo(cfg, events=a.events, rate=a.rate, seed=a.seed, bad_share=a.bad_share,
                            port=a.port, keep_broker=a.keep_broker or a.review, deadline_s=a.deadline,
                            challenger=challenger, report_path=report_path, ab=a.ab_model if a.ab else None,
                            rings=a.rings)
    print(demo.render(summary))
    if a.json:
        print(orjson.dumps(summary).decode())
    ok = summary["missing"] == 0 and summary["duplicates"] == 0
    if a.review:
        from .tools.review.service import serve_demo

        try:
            serve_demo(f"127.0.0.1:{a.port}", cfg, summary["decisions"]["review"] + summary["decisions"]["block"],
                       port=a.review_port)
        finally:
            if not broker_was_running and not a.keep_broker:
                broker.down()
    return 0 if ok else 1


def review_settings(a):
    from .tools.review.ingest import IngestSettings
    from .tools.review.service import ServiceSettings
    from .tools.review.store import env_metrics_token
    from .tools.review.web import WebSettings

    ing = IngestSettings(bootstrap_servers=a.bootstrap_servers, decisions_topic=a.decisions_topic,
                         events_topic=a.events_topic, control_topic=a.control_topic, start=a.start,
                         history_days=a.history_days)
    web = WebSettings(secure_cookies=a.secure_cookies, metrics_token=env_metrics_token())
    return ServiceSettings(db=a.db, ingest=ing, labels_topic=a.labels_topic, host=a.host, port=a.port, web=web)


def cmd_review(a) -> int:
    import getpass

    from .tools.review.store import Store, StoreError, random_password

    def read_password(prompt: str) -> tuple[str, bool]:
        """(the password from stdin, the terminal or, when none is given, a generated one; generated?)"""
        if a.password_stdin:
            pw = sys.stdin.readline().rstrip("\n")
        elif sys.stdin.isatty():
            pw = getpass.getpass(prompt)
        else:
            pw = ""
        return (pw, False) if pw else (random_password(), True)

    try:
        if a.action == "add-user":
            if not a.username:
                raise SystemExit("riskstream review add-user: give the user name")
            store = Store(a.db)
            pw, generated = read_password(f"password for {a.username} (empty: generate one): ")
            store.add_user(a.username, pw, by=f"cli:{getpass.getuser()}", role=a.role or "analyst")
            if a.timezone:
                store.set_timezone(a.username, a.timezone, by=f"cli:{getpass.getuser()}")
            print(f"[review] user {a.username} added ({a.role or 'analyst'})"
                  + (f"; password (shown once): {pw}" if generated else ""))
            return 0
        if a.action == "user":
            what, name = a.username, a.user_name
            if what not in ("disable", "enable", "reset-password", "set-role", "set-timezone") or not name:
                raise SystemExit("riskstream review user: disable NAME, enable NAME, reset-password NAME, "
                                 "set-role NAME --role analyst|lead|admin or set-timezone NAME --timezone ZONE")
            if what == "set-role" and not a.role:
                raise SystemExit("riskstream review user set-role NAME: give --role analyst, lead or admin")
            if what == "set-timezone" and not a.timezone:
                raise SystemExit("riskstream review user set-timezone NAME: give --timezone, e.g. Europe/Paris")
            store = Store(a.db)
            by = f"cli:{getpass.getuser()}"
            if what == "set-role":
                store.set_role(name, a.role, by=by)
                print(f"[review] user {name} is now {a.role}; their sessions ended")
            elif what == "set-timezone":
                store.set_timezone(name, a.timezone, by=by)
                print(f"[review] user {name} sees times in {a.timezone}")
            elif what == "reset-password":
                pw, generated = read_password(f"new password for {name} (empty: generate one): ")
                store.reset_password(name, pw, by=by)
                print(f"[review] password of {name} reset; their sessions ended"
                      + (f"; new password (shown once): {pw}" if generated else ""))
            else:
                store.set_disabled(name, what == "disable", by=by)
                print(f"[review] user {name} " + ("disabled; their sessions ended" if what == "disable"
                                                 else "enabled; a lockout is lifted"))
            return 0
        s = review_settings(a)
        if a.action == "ingest":
            from .tools.review.ingest import Ingest

            store = Store(s.db)
            ing = Ingest(store, s.ingest)
            print(f"[review] ingesting {s.ingest.decisions_topic} (read_committed) into {store.url}", file=sys.stderr,
                  flush=True)
            try:
                ing.run()
            except KeyboardInterrupt:
                pass
            return 0
        from .tools.review.service import ReviewService

        svc = ReviewService(s).start()
        print(f"[review] serving {svc.url} (reading {s.ingest.decisions_topic} on {s.ingest.bootstrap_servers}; "
              f"labels to {s.labels_topic}); add analysts with `riskstream review add-user NAME`", file=sys.stderr,
              flush=True)
        svc.wait()
        return 0
    except (ValueError, StoreError, ConnectionError) as e:
        raise SystemExit(f"riskstream review: {e}")


def cmd_bench(a) -> int:
    if a.keys:  # the key-count benchmark: state backends against millions of keys
        from benchmarks import scale

        argv = ["--users", a.keys, "--backends", a.backends, "--parallelism", str(a.parallelism),
                "--checkpoint-interval-ms", str(a.checkpoint_interval_ms or 1000), "--heap", a.heap,
                "--held-seconds", str(a.held_seconds), "--held-rate", str(a.held_rate),
                "--savepoint-format", a.savepoint_format]
        return scale.main(argv + (["--json"] if a.json else []))
    from benchmarks import bench, scale

    if a.state:
        try:
            held = scale.parse_count(a.held_users)
        except argparse.ArgumentTypeError as e:
            raise SystemExit(f"riskstream bench: --held-users: {e}")
        backends = tuple(b for b in a.state.split(",") if b)
        unknown = set(backends) - set(bench.STATE_CASES)
        if unknown or not backends:
            raise SystemExit(f"riskstream bench: --state {a.state!r}: choose from {','.join(bench.STATE_CASES)}")
        res = bench.state_cost(backends, held_users=held, events=a.events, parallelism=a.parallelism,
                               rounds=a.split_rounds, seed=a.seed, checkpoint_interval_ms=a.checkpoint_interval_ms,
                               keep=a.keep)
        print(bench.render_state_cost(res))
        if a.json:
            print(orjson.dumps(res).decode())
        return 0 if res["exact"] and res["restored"] else 1
    if a.graph:
        res = bench.graph_cost(events=a.events, parallelism=a.parallelism, rounds=a.split_rounds, seed=a.seed,
                               checkpoint_interval_ms=a.checkpoint_interval_ms, latency_seconds=a.latency_seconds,
                               keep=a.keep)
        print(bench.render_graph_cost(res))
        if a.json:
            print(orjson.dumps(res).decode())
        return 0 if res["exact"] and res["as_asked"] else 1
    if a.split:
        res = bench.split_cost(events=a.events, parallelism=a.parallelism, rounds=a.split_rounds, seed=a.seed,
                               checkpoint_interval_ms=a.checkpoint_interval_ms, keep=a.keep)
        print(bench.render_split_cost(res))
        if a.json:
            print(orjson.dumps(res).decode())
        return 0 if res["exact"] else 1
    names = tuple(n for n in a.contenders.split(",") if n)
    unknown = set(names) - set(bench.CONTENDERS)
    if unknown:
        raise SystemExit(f"riskstream bench: unknown contenders {sorted(unknown)}; choose from {bench.CONTENDERS}")
    res = bench.run_bench(events=a.events, parallelism=a.parallelism, latency_seconds=a.latency_seconds,
                          seed=a.seed, contenders=names, checkpoint_interval_ms=a.checkpoint_interval_ms,
                          keep=a.keep)
    print(bench.render(res))
    if a.json:
        print(orjson.dumps(res).decode())
    return 0


def cmd_verify(a) -> int:
    from .kafka_io import parse_time
    from .tools.audit import render, verify
    from .ops.broker import broker_ready

    try:
        from_ms, to_ms = parse_time(a.from_time), parse_time(a.to_time)
    except ValueError as e:
        raise SystemExit(f"riskstream verify: {e}")
    if not broker_ready(a.bootstrap_servers, timeout_s=5):
        raise SystemExit(f"riskstream verify: no Kafka broker answers at {a.bootstrap_servers}")
    if from_ms is not None and to_ms is not None and from_ms >= to_ms:
        raise SystemExit("riskstream verify: --from-time must be before --to-time")
    try:
        rep = verify(a.bootstrap_servers, a.events_topic, a.decisions_topic, a.dead_letter_topic, from_ms, to_ms,
                     wait_s=a.wait, progress=lambda m: print(f"[verify] {m}", file=sys.stderr, flush=True))
    except TimeoutError as e:
        raise SystemExit(f"riskstream verify: {e}")
    print(render(rep))
    if a.json:
        print(orjson.dumps(rep).decode())
    return 0 if rep["missing"] == rep["duplicates"] == rep["unexpected"] == 0 else 1


def cmd_chaos(a) -> int:
    from .tools import chaos, chaos_cluster

    known = chaos_cluster.CLUSTER_KINDS if a.cluster else chaos.KINDS
    kinds = tuple(a.kinds.split(",")) if a.kinds else known
    unknown = set(kinds) - set(known)
    if unknown:
        where = "on a standalone cluster (--cluster)" if a.cluster else "on a MiniCluster (without --cluster)"
        raise SystemExit(f"riskstream chaos: failure kinds {sorted(unknown)} do not run {where}; choose from "
                         f"{', '.join(known)}")
    if a.cluster:
        try:
            res = chaos_cluster.run_cluster_chaos(
                a.events, a.failures, rate=a.rate, seed=a.seed, parallelism=a.parallelism or 2,
                checkpoint_interval_ms=a.checkpoint_interval_ms, kinds=kinds, port=a.port, deadline_s=a.deadline,
                keep=a.keep)
        except ValueError as e:
            raise SystemExit(f"riskstream chaos: {e}")
    else:
        res = chaos.run_chaos(a.events, a.failures, rate=a.rate, seed=a.seed, parallelism=a.parallelism or 1,
                              checkpoint_interval_ms=a.checkpoint_interval_ms, kinds=kinds, port=a.port,
                              deadline_s=a.deadline, keep=a.keep)
    print(chaos.render(res))
    if a.json:
        print(orjson.dumps(res).decode())
    pending = sum((res.get("pending_commit") or {}).values())
    return 0 if res["missing"] == res["duplicates"] == res["unexpected"] == pending == 0 else 1


def input_mapping(a):
    """The mapping of ``--mapping FILE`` with the mapping flags on top (None: no mapping declared)."""
    from udfs.ingest import Mapping

    over: dict = {}
    for kv in a.map or []:
        name, sep, col = kv.partition("=")
        if not sep or not name or not col:
            raise SystemExit(f"riskstream {a.cmd}: --map {kv!r}: give FIELD=COLUMN, e.g. user_id=customer_id")
        if name == "ts":
            over.setdefault("ts", {})["column"] = col
        else:
            over.setdefault("fields", {})[name] = col
    for kv in a.event_type or []:
        theirs, sep, ours = kv.partition("=")
        if not sep:
            raise SystemExit(f"riskstream {a.cmd}: --event-type {kv!r}: give THEIRS=OURS, e.g. TX=payment")
        over.setdefault("event_types", {})[theirs] = ours
    if a.ts_unit:
        over.setdefault("ts", {})["unit"] = a.ts_unit
    if a.timezone:
        over.setdefault("ts", {})["timezone"] = a.timezone
    if a.label_column:
        over.setdefault("label", {})["column"] = a.label_column
    if a.extras:
        over["extras"] = a.extras
    for kv in getattr(a, "const", None) or []:
        name, sep, value = kv.partition("=")
        if not sep or not name:
            raise SystemExit(f"riskstream {a.cmd}: --const {kv!r}: give FIELD=VALUE, e.g. currency=USD")
        if name == "amount":
            try:
                value = float(value)
            except ValueError:
                raise SystemExit(f"riskstream {a.cmd}: --const amount={value!r} is not a number") from None
        over.setdefault("constants", {})[name] = value
    return Mapping.load(a.mapping, over)


def _input_report(cmd: str, stats: dict, rejects: str | None) -> int:
    """Print what the input held (rejects, order) and return the exit code: 1 when the input is unusable."""
    rej = stats["rejected"]
    if rej:
        print(f"[{cmd}] rejected {sum(rej.values())} of {stats['records']} records: "
              + ", ".join(f"{k} {v}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1]))
              + (f"; each with its row, line, reason and detail in {rejects}" if rejects else ""), file=sys.stderr)
    if stats["out_of_order"] and stats["order"] == "file":
        print(f"[{cmd}] warning: {stats['out_of_order']} events are behind an earlier event's time in file order; "
              f"{stats['late']} of them came out late for a key (beyond the allowed lateness: not stored in the "
              "windows, as the job would treat them). The file order is taken as the arrival order; if it is "
              "not, pass --order sort (by event time) or --order refuse.", file=sys.stderr)
    elif stats["out_of_order"]:
        print(f"[{cmd}] sorted by event time: {stats['out_of_order']} events were behind an earlier event's time "
              "in file order", file=sys.stderr)
    if stats["verdict"]:
        print(f"riskstream {cmd}: {stats['verdict']}", file=sys.stderr)
        return 1
    return 0


def _rejects_path(a, output: str) -> str:
    return a.rejects or f"{output}.rejects.jsonl"


def _feature_cache(a):
    """The feature cache's folder (``udfs.replay.FeatureCache``), None with --no-feature-cache."""
    return None if a.no_feature_cache else paths.home() / "cache" / "features"


def _cache_note(stats: dict) -> str:
    return "; features from the feature cache" if stats.get("feature_cache") == "hit" else ""


def _label_delay(a) -> int | str | None:
    from udfs.ingest import IngestError, parse_label_delay

    try:
        return parse_label_delay(a.label_delay)
    except (IngestError, ValueError) as e:
        raise SystemExit(f"riskstream {a.cmd}: {e}") from None


def cmd_replay(a) -> int:
    from udfs.ingest import IngestError
    from udfs.replay import replay_file

    cfg = job_config(a)  # the job's own settings, so the replay computes what the job would
    rejects = _rejects_path(a, a.output)
    try:
        stats = replay_file(a.input, a.output, cfg.allowed_lateness_ms, cfg.dedup_horizon_ms,
                            mapping=input_mapping(a), order=a.order, rejects_path=rejects,
                            max_reject_share=a.max_reject_share, labels_path=a.labels,
                            label_delay_ms=_label_delay(a), cache_dir=_feature_cache(a))
    except IngestError as e:
        raise SystemExit(f"riskstream replay: {e}")
    lab = f"; labels {stats['labels_applied']} of {stats['labels']} arrived" if stats["labels"] else ""
    print(f"[replay] {stats['events']} events -> {a.output}; late {stats['late']}; "
          f"rejected {stats['rejected'] or 0}{lab}{_cache_note(stats)}", file=sys.stderr)
    return _input_report("replay", stats, stats["rejects_file"])


def cmd_bootstrap(a) -> int:
    from udfs.ingest import IngestError

    from .kafka_io import parse_time
    from .ops.bootstrap import BootstrapFailed, TopicRange, bootstrap

    cfg = job_config(a)  # the job's own settings: its name, lateness, dedup horizon, max parallelism, labels
    try:
        topics = None
        if a.from_topic:
            topics = TopicRange(parse_time(a.from_time), parse_time(a.to_time))
        elif a.from_time or a.to_time:
            raise ValueError("--from-time and --to-time select records of the topics: give --from-topic")
        if a.from_topic and a.input:
            raise ValueError("give --input (a history file) or --from-topic, not both")
        if topics is not None and None not in (topics.from_ms, topics.to_ms) and topics.from_ms >= topics.to_ms:
            raise ValueError("--from-time must be before --to-time")
        if topics is not None:
            from .ops.broker import broker_ready

            if not broker_ready(cfg.bootstrap_servers, timeout_s=5, client_props=cfg.kafka_python_properties()):
                raise ValueError(f"no Kafka broker answers at {cfg.bootstrap_servers} (--bootstrap-servers)")
        res = bootstrap(cfg, a.input, labels_path=a.labels, mapping=input_mapping(a), order=a.order,
                        output=Path(a.output) if a.output else None, parallelism=a.parallelism_write,
                        label_delay_ms=_label_delay(a), topics=topics)
    except (IngestError, ValueError, FileExistsError, FileNotFoundError, TimeoutError, BootstrapFailed) as e:
        raise SystemExit(f"riskstream bootstrap: {e}")
    if res.topics is not None:
        dead = ", ".join(f"{k} {v}" for k, v in sorted(res.topics.dead_letters.items())) or "none"
        print(f"[bootstrap] read {res.topics.records} (read_committed; partition, start, end offsets: "
              f"{res.topics.ranges}); records the job dead-letters: {dead}; malformed labels {res.topics.bad_labels}",
              file=sys.stderr)
    if res.labels_later:
        print(f"[bootstrap] {res.labels_later} labels arrived after the history's last event and are not in the "
              "state: the job reads them from the labels topic only if it starts before them", file=sys.stderr)
    span = ""
    if res.history_start_ts is not None:
        import datetime as dt

        fmt = lambda t: dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: E731
        span = f" from {fmt(res.history_start_ts)} to {fmt(res.history_end_ts)}"
    keys = ", ".join(f"{k} {v:,}" for k, v in res.keys.items())
    print(f"[bootstrap] {res.events:,} events{span} ({res.duplicates} duplicates, {res.rejected} rejected), "
          f"{res.labels:,} labels -> keys: {keys}; {res.seconds:.1f}s", file=sys.stderr)
    print(f"[bootstrap] start the job from it: riskstream run --job-name {cfg.job_name} --restore-from {res.path} "
          "(and --starting-offsets latest if the history runs up to now: its events must not be read again)",
          file=sys.stderr)
    print(res.path)
    return 0


def cmd_score(a) -> int:
    from udfs.ingest import IngestError
    from udfs.replay import score_file
    from udfs.scoring import ModelError

    cfg = job_config(a)
    rejects = _rejects_path(a, a.output)
    try:
        stats = score_file(a.input, a.output, a.model or cfg.resolved_model_path(), cfg.allowed_lateness_ms, cfg.dedup_horizon_ms,
                           mapping=input_mapping(a), order=a.order, rejects_path=rejects,
                           max_reject_share=a.max_reject_share, labels_path=a.labels,
                           label_delay_ms=_label_delay(a), compare=a.compare, cache_dir=_feature_cache(a))
    except (IngestError, ModelError) as e:
        raise SystemExit(f"riskstream score: {e}")
    d = stats["decisions"]
    print(f"[score] {stats['events']} events scored by {stats['model_version']} -> {a.output}; allow {d['allow']}, "
          f"review {d['review']}, block {d['block']}; late {stats['late']}{_cache_note(stats)}", file=sys.stderr)
    if stats.get("drift_warning"):
        print(f"[score] WARNING {stats['drift_warning']}", file=sys.stderr)
    elif stats.get("drift") is None:
        print(f"[score] {stats['model_version']} has no training distribution: inputs are not checked for drift "
              "(retrain it to get one)", file=sys.stderr)
    return _input_report("score", stats, stats["rejects_file"])


def add_input_flags(p: argparse.ArgumentParser, rejects_default: str = "<output>.rejects.jsonl") -> None:
    """Reading a user's file: the mapping, the event-time order, the rejects file and threshold."""
    from udfs.ingest import DEFAULT_MAX_REJECT_SHARE, EXTRAS_POLICIES, ORDERS, TS_UNITS

    g = p.add_argument_group("input: JSON lines, CSV or Parquet, through a mapping (docs/models.md)")
    g.add_argument("--mapping", metavar="FILE", help="mapping of the file's columns to the event contract "
                                                     "(.toml or .json); the flags below override it")
    g.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="contract field from a column (repeatable), e.g. --map user_id=customer_id; one column "
                        "may feed several fields (--map user_id=card --map payment_ref=card)")
    g.add_argument("--const", action="append", metavar="FIELD=VALUE",
                   help="contract field the data lacks, the same for every row (repeatable), e.g. --const "
                        "currency=USD")
    g.add_argument("--ts-unit", choices=list(TS_UNITS), help="unit of the ts column [default ms]")
    g.add_argument("--timezone", help="timezone of datetimes without an offset [default UTC]")
    g.add_argument("--event-type", action="append", metavar="THEIRS=OURS",
                   help="map an event-type value to a contract event type (repeatable); unlisted values are "
                        "rejected")
    g.add_argument("--label-column", metavar="COLUMN", help="fraud label column: 0/1, true/false or yes/no")
    g.add_argument("--extras", choices=list(EXTRAS_POLICIES),
                   help="other columns: ignore (default with a mapping), keep all under extras, or reject")
    g.add_argument("--order", choices=list(ORDERS), default="file",
                   help="file: replay in file order (the arrival order) and warn with the count of events out of "
                        "event-time order; sort: by event time (ties keep file order); refuse: fail if any "
                        "event is out of order [default file]")
    g.add_argument("--max-reject-share", type=float, default=DEFAULT_MAX_REJECT_SHARE,
                   help="exit non-zero when more than this share of the records is rejected; a file with every "
                        f"record rejected always fails [default {DEFAULT_MAX_REJECT_SHARE}]")
    g.add_argument("--rejects", metavar="FILE",
                   help=f"rejected records as JSON lines: row, line, reason, detail, record [default {rejects_default}]")


def split_message(a) -> dict:
    """The split message of ``riskstream control split``: ``--arm NAME=SHARE`` (repeatable), each arm's
    ``--model NAME=PATH`` and optional ``--thresholds NAME=REVIEW,BLOCK``; ``--end`` ends the split."""
    import time

    def pairs(items, what):
        out = {}
        for it in items or []:
            name, sep, value = it.partition("=")
            if not sep or not name or not value:
                raise SystemExit(f"riskstream control split: {what} {it!r} is not NAME=VALUE")
            if name in out:
                raise SystemExit(f"riskstream control split: {what} for {name} given twice")
            out[name] = value
        return out

    version = a.version or f"split-{int(time.time())}"
    if a.end:
        if a.arm:
            raise SystemExit("riskstream control split: --end takes no --arm")
        return {"kind": "split", "version": version, "arms": []}
    arms, models, thresholds = pairs(a.arm, "--arm"), pairs(a.model, "--model"), pairs(a.thresholds, "--thresholds")
    if not arms:
        raise SystemExit("riskstream control split: give at least one --arm NAME=SHARE (or --end)")
    for extra in (set(models) | set(thresholds)) - set(arms):
        raise SystemExit(f"riskstream control split: --model/--thresholds name {extra}, which is no --arm")
    out = []
    for name, share in arms.items():
        try:
            arm = {"name": name, "share": float(share)}
        except ValueError:
            raise SystemExit(f"riskstream control split: share {share!r} of arm {name} is not a number") from None
        if name in models:
            arm["path"] = models[name]
        elif name != "champion":
            raise SystemExit(f"riskstream control split: arm {name} needs --model {name}=PATH")
        if name in thresholds:
            try:
                review, block = (float(x) for x in thresholds[name].split(","))
            except ValueError:
                raise SystemExit(f"riskstream control split: --thresholds {name}=REVIEW,BLOCK, got "
                                 f"{thresholds[name]!r}") from None
            arm.update(review_threshold=review, block_threshold=block)
        out.append(arm)
    return {"kind": "split", "version": version, "key": a.key, "salt": a.salt, "arms": out}


def cmd_control(a) -> int:
    """Validate a control message here (shape; the model file too, if it is on this machine), then send it."""
    from kafka import KafkaProducer

    from udfs.control import ControlError, parse_control
    from udfs.scoring import ModelError, Scorer

    if a.what == "rules":
        raw = Path(a.file).read_bytes() if a.file else b""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise SystemExit(f"riskstream control: {a.file} is not JSON: {e}")
        msg = {"kind": "rules", **({"version": a.version} if a.version else {}),
               **(body if isinstance(body, dict) else {"rules": body})}
    elif a.what == "split":
        msg = split_message(a)
    else:
        msg = {"kind": "model", "role": a.what, "path": None if a.remove else a.path}
    raw = orjson.dumps(msg)
    try:
        parsed = parse_control(raw)
        paths_ = [parsed["path"]] if parsed["kind"] == "model" and parsed["path"] else \
            [arm["path"] for arm in parsed["arms"] if arm.get("path")] if parsed["kind"] == "split" else []
        for path in paths_:
            if Path(path).exists():
                Scorer(path)  # the job would refuse it: say so now
            else:
                print(f"[control] {path} is not on this machine: sending it unchecked (the job checks "
                      "it and keeps the old model if it is refused)", file=sys.stderr)
    except (ControlError, ModelError) as e:
        raise SystemExit(f"riskstream control: refused: {e}")
    from .ops.broker import broker_ready

    if not broker_ready(a.bootstrap_servers, timeout_s=5):
        raise SystemExit(f"riskstream control: no Kafka broker answers at {a.bootstrap_servers}")
    p = KafkaProducer(bootstrap_servers=a.bootstrap_servers, acks="all")
    try:
        md = p.send(a.topic, raw).get(timeout=30)
    finally:
        p.close()
    print(f"[control] sent to {a.topic} at offset {md.offset}: {raw.decode()[:200]}", file=sys.stderr)
    return 0


def cmd_rollout(a) -> int:
    """The canary: ``start`` writes the rollout's state and runs its controller in this process; ``resume``
    takes over a live rollout whose controller is gone; ``status``, ``promote`` and ``rollback`` work from
    any process (``riskstream.tools.rollout``)."""
    from udfs.ingest import IngestError, parse_duration

    from . import rollout as ro
    from .tools import rollout as ctl

    path = ctl.state_path(a.control_topic)
    try:
        if a.action == "start":
            if not a.model:
                raise ro.RolloutError("start needs --model PATH (the candidate's .onnx, its .json spec beside it)")
            steps = ro.parse_steps(a.steps)
            try:
                every = parse_duration(a.every, "--every")
            except IngestError as e:
                raise ro.RolloutError(str(e)) from None
            thresholds = None
            if a.thresholds:
                try:
                    thresholds = tuple(float(x) for x in a.thresholds.split(","))
                    assert len(thresholds) == 2
                except (ValueError, AssertionError):
                    raise ro.RolloutError(f"--thresholds REVIEW,BLOCK, got {a.thresholds!r}") from None
            path, st = ctl.prepare(a.bootstrap_servers, a.control_topic, a.decisions_topic, a.dead_letter_topic,
                                   a.model, steps, every, ro.parse_guardrails(a.guardrails), thresholds,
                                   a.promote_at_end, a.id)
            ctl.log(f"{st['id']}: {st['model_version']} through {', '.join(f'{s:g}' for s in steps)} % every "
                    f"{every / 1000:g}s; guardrails {ro.Guardrails.from_json(st['guardrails'])}; state {path}")
        elif a.action == "resume":
            ctl.take_over(path)
        elif a.action in ("promote", "rollback"):
            st = ctl.operator(path, a.action, a.reason)
            print(ctl.render_status(st))
            return 0
        else:
            st = ctl.load(path)
            if st is None:
                raise ro.RolloutError(f"no rollout on control topic {a.control_topic} (no {path})")
            print(orjson.dumps(st).decode() if a.json else ctl.render_status(st))
            return 0
        st = ctl.Controller(path, Path(a.models_dir), a.poll).run()
    except ro.RolloutError as e:
        raise SystemExit(f"riskstream rollout: {e}")
    print(ctl.render_status(st))
    return 0 if st.get("status") != ro.ROLLED_BACK else 3


def cmd_features(a) -> int:
    from udfs.chain import spec_document
    from udfs.features import FEATURES, GRAPH_AGGS, GRAPH_FEATURES, GRAPH_FEATURES_ENV, LABEL_AGGS, spec_fingerprint

    from .jobflags import job_config

    if a.json:
        print(orjson.dumps(spec_document(job_config(a).allowed_lateness_ms)).decode())
        return 0
    print(f"feature spec {spec_fingerprint()} ({len(FEATURES)} features, model input order; graph features "
          f"{'on' if GRAPH_FEATURES else f'off: {GRAPH_FEATURES_ENV}=1 adds them'})")
    wide = max(len(f.agg) for f in FEATURES)
    for f in FEATURES:
        graph = f.agg in GRAPH_AGGS
        h = (f"{f.horizon_ms // 1000}s exact" if graph  # edge times kept in ms, no buckets
             else f"{f.horizon_ms // 1000}s/{f.bucket_ms // 1000}s" if f.horizon_ms else "-")
        if f.offset_ms:  # a delayed label window: it ends this far before the event
            h += f" -{f.offset_ms // 1000}s"
        what = ("fraud labels, from their arrival" if f.agg in LABEL_AGGS
                else "devices and cards two or more users used with the key" if f.agg == "graph_shared_entities"
                else "users within two hops, fraud labels from their arrival" if graph
                else ",".join(f.event_types) if f.event_types else "all")
        print(f"  {f.name:<28} {f.entity:<7} {f.agg:<{wide}} {f.field or '-':<10} {h:<15} {what}")
    return 0


def cluster_settings(a):
    """``cluster up``'s flags as validated cluster settings (the job's validators, the cluster's defaults)."""
    from pydantic import ValidationError

    from .config import JobConfig
    from .ops.cluster import ClusterSettings

    if a.taskmanagers < 1:
        raise SystemExit("riskstream cluster up: --taskmanagers must be at least 1")
    items = a.flink_conf if a.flink_conf is not None else env_or("flink_conf", "")
    try:  # the same rules as the job's settings of the same names
        items = JobConfig(state_backend=a.state_backend, rocksdb_local_dir=a.rocksdb_local_dir,
                          managed_memory=a.managed_memory, taskmanager_heap=a.taskmanager_heap,
                          flink_conf=items).flink_conf
        JobConfig(managed_memory=a.taskmanager_memory)
    except ValidationError as e:
        raise SystemExit("riskstream cluster up: " + "; ".join(err["msg"] for err in e.errors()))
    changelog = a.changelog
    if changelog is None and env_or("changelog", "").strip():
        changelog = env_or("changelog", "").strip().lower() not in ("0", "false", "no")
    return ClusterSettings(state_backend=a.state_backend, incremental_checkpoints=a.incremental_checkpoints,
                           changelog=changelog,
                           rocksdb_local_dir=a.rocksdb_local_dir, taskmanagers=a.taskmanagers,
                           taskmanager_memory=a.taskmanager_memory, managed_memory=a.managed_memory,
                           taskmanager_heap=a.taskmanager_heap, flink_conf=tuple(items or ()))


def cmd_cluster(a) -> int:
    from .ops import cluster

    if a.action == "up":
        try:
            lay = cluster.up(rest_port=a.rest_port, slots=a.slots, deadline_s=a.deadline,
                             settings=cluster_settings(a))
        except (RuntimeError, TimeoutError, ValueError) as e:
            raise SystemExit(f"riskstream cluster up: {e}")
        print(f"[cluster] REST and web UI: {lay.rest_url} (submit with `riskstream submit`)", file=sys.stderr)
        print(lay.rest_url)
    elif a.action == "down":
        cluster.down()
    elif a.action == "add-taskmanager":
        try:
            name, pid = cluster.add_taskmanager(deadline_s=a.deadline)
        except (RuntimeError, TimeoutError) as e:
            raise SystemExit(f"riskstream cluster add-taskmanager: {e}")
        print(f"{name} {pid}")
    else:
        st = cluster.status()
        if a.json:
            print(orjson.dumps(st).decode())
        else:
            for k, v in st.items():
                if k != "jobs":
                    print(f"{k}: {v}")
            for j in st["jobs"]:
                print(f"job {j['id']} {j['state']:<10} {j['name']}")
        return 0 if st["ready"] else 1
    return 0


def cmd_submit(a) -> int:
    from .ops import flink_rest, submit
    from .ops.errors import StartupError

    cfg = job_config(a)  # fail fast on invalid flags or RISKSTREAM_* values, before any Flink work
    try:
        res = submit.submit(submit.settings_from_args(a), jobmanager=a.jobmanager, from_savepoint=a.from_savepoint,
                            allow_non_restored_state=a.allow_non_restored_state, job_name=cfg.job_name,
                            state_backend=cfg.flink_settings(local=False).get("state.backend.type"))
        for line in res.output.splitlines():  # the job's client: its settings (state backend, changelog), restore
            if line.startswith(("[run] ", "[restore] ")):
                print(line, file=sys.stderr)
        print(f"[submit] job {res.job_id} submitted to {res.rest_url} in {res.seconds:.1f}s"
              + (f" from {a.from_savepoint}" if a.from_savepoint else ""), file=sys.stderr)
        print(res.job_id, flush=True)
        if a.wait_running:
            secs = flink_rest.wait_running(res.rest_url, res.job_id, deadline_s=a.deadline)
            print(f"[submit] job {res.job_id} running, first checkpoint completed, {secs:.1f}s after submission",
                  file=sys.stderr)
    except (flink_rest.FlinkError, StartupError) as e:
        raise SystemExit(f"riskstream submit: {e}")
    return 0


def cmd_savepoint(a) -> int:
    from .ops import flink_rest, submit

    try:
        res = submit.savepoint(a.job, jobmanager=a.jobmanager, target_dir=a.dir, deadline_s=a.deadline,
                               format=a.format)
    except flink_rest.FlinkError as e:
        raise SystemExit(f"riskstream savepoint: {e}")
    print(f"[savepoint] job {a.job}: {_format_words(res)} in {res.seconds:.1f}s; the job keeps running; "
          + (f"recorded in job {res.job_name}'s lineage" if res.job_name else
             "not a job riskstream started here, so no lineage recorded it"), file=sys.stderr)
    if res.note:
        print(f"[savepoint] note: {res.note}", file=sys.stderr)
    print(res.location)
    return 0


def _format_words(res) -> str:
    """``native savepoint (the job runs on rocksdb)``: the format taken and why, for the command's line."""
    return f"{res.format} savepoint ({res.why})"


def _latest_note(name: str | None) -> str:
    """What `--restore-from latest` of job ``name`` would pick now, in a few words."""
    from .ops import lineage

    if name is None:
        return ""
    try:
        res = lineage.resolve_latest(name)
    except lineage.ManualRestoreRequired as e:
        return f"`--restore-from latest` would be refused: {e}"
    if res is None or res.snapshot is None:
        return "`--restore-from latest` would start without state"
    return f"`--restore-from latest` resumes from {res.snapshot.describe()}"


def cmd_cancel(a) -> int:
    from .ops import flink_rest, submit

    try:
        if a.no_savepoint:
            ref = submit.resolve(a.job, jobmanager=a.jobmanager)
            state = submit.cancel(ref.job_id, jobmanager=a.jobmanager, deadline_s=a.deadline)
            note = _latest_note(ref.name)
            print(f"[cancel] job {ref.job_id} {state} (no savepoint)" + (f"; {note}" if note else ""),
                  file=sys.stderr)
            print(state)
            return 0
        res = submit.stop(a.job, jobmanager=a.jobmanager, target_dir=a.dir, deadline_s=a.deadline, format=a.format)
    except flink_rest.FlinkError as e:
        raise SystemExit(f"riskstream cancel: {e}")
    note = _latest_note(res.job_name)
    if res.note:
        print(f"[cancel] note: {res.note}", file=sys.stderr)
    print(f"[cancel] job {a.job} stopped with a {_format_words(res)} in {res.seconds:.1f}s (job {res.final_state}); "
          + (f"recorded in job {res.job_name}'s lineage; {note}; " if res.job_name else "")
          + f"resume with `riskstream submit --from-savepoint {res.location}` or "
            f"`riskstream run --restore-from {res.location}`", file=sys.stderr)
    print(res.location)
    return 0


def cmd_snapshots(a) -> int:
    from .ops import snapshots

    d = snapshots.listing(a.job)
    if not d["runs"] and not d["snapshots"]:
        print(f"riskstream snapshots: job {a.job} has no lineage and no snapshot under {d['folder']}", file=sys.stderr)
    print(snapshots.render(d))
    if a.json:
        print(orjson.dumps(d).decode())
    return 0


def _model_spec(models_dir: Path, version: str) -> dict | None:
    """A model's spec ``<models_dir>/<version>.json``, or None (not there, or not a spec)."""
    path = models_dir / f"{version}.json"
    if "/" in version or not path.is_file():
        return None
    try:
        spec = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return None
    return spec if isinstance(spec, dict) and spec.get("model_version") == version else None


def cmd_report(a) -> int:
    import time

    from .tools import report

    if not 0 <= a.review_budget <= 1:
        raise SystemExit(f"riskstream report: --review-budget is a share in [0, 1], got {a.review_budget}")
    if a.decisions:
        decisions, bad = report.read_records(a.decisions)
        source = a.decisions
        if not decisions:
            raise SystemExit(f"riskstream report: read no record from {a.decisions} ({bad} unreadable rows): it "
                             "takes decision records (JSON lines) or what `riskstream score` writes (JSON lines, "
                             "or CSV ending in .csv)")
    else:
        from .ops.broker import broker_ready

        if not broker_ready(a.bootstrap_servers, timeout_s=5):
            raise SystemExit(f"riskstream report: no Kafka broker answers at {a.bootstrap_servers} "
                             "(or pass --decisions FILE)")
        decisions, bad = report.read_decisions_topic(a.bootstrap_servers, a.decisions_topic)
        source = f"{a.decisions_topic} on {a.bootstrap_servers} (read_committed)"
    labels = report.read_labels(a.labels) if a.labels else {}
    if a.top_k < 1:
        raise SystemExit(f"riskstream report: --top-k must be at least 1, got {a.top_k}")
    from udfs.split import SPLIT_KEYS

    if a.split_key not in SPLIT_KEYS:
        raise SystemExit(f"riskstream report: --split-key must be an entity of the spec, one of "
                         f"{', '.join(sorted(SPLIT_KEYS))}; got {a.split_key!r}")
    fig = report.build_report(decisions, labels, a.review_budget, time_field=a.time_axis, top_k=a.top_k,
                              split_key=a.split_key)
    fig["drift"] = report.drift_by_model(decisions, lambda v: _model_spec(Path(a.models_dir), v))
    fig["headline"]["unreadable_records"] += bad
    fig["source"] = source
    fig["generated_at"] = int(time.time() * 1000)
    out = Path(a.out) if a.out else report.default_out_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.render_html(fig), encoding="utf-8")
    print(report.render_text(fig))
    print(f"report: {out}")
    if a.json:
        print(orjson.dumps({**fig["headline"], "report": str(out)}).decode())
    return 0


def cmd_train(a) -> int:
    try:
        from models import train as tr
    except ImportError as e:  # scikit-learn / skl2onnx live in the `train` extra
        raise SystemExit(f"riskstream train: {e}; install the train extra (pip install -e '.[train]')")

    hyper = {k: v for k, v in (("max_iter", a.max_iter), ("learning_rate", a.learning_rate),
                               ("max_leaf_nodes", a.max_leaf_nodes), ("class_weight", a.class_weight))
             if v is not None}
    if a.bags is not None:
        hyper["bags"] = a.bags
    try:
        seeds = [int(s) for s in a.seed.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"riskstream train: --seed {a.seed!r}: give an integer or a comma-separated list")
    from udfs.ingest import IngestError, parse_duration, parse_label_delay, parse_when

    try:
        when = {k: None if getattr(a, k) is None else parse_when(getattr(a, k), "--" + k.replace("_", "-"))
                for k in ("train_from", "train_until", "test_from", "test_until")}
        periods = tr.Periods(**when, gap_ms=parse_duration(a.gap, "--gap"))
        delay = parse_label_delay(a.label_delay)
        mapping = input_mapping(a) if a.events else None
        res = tr.run(events=Path(a.events) if a.events else None, labels=Path(a.labels) if a.labels else None,
                     generate=a.generate, seeds=seeds, version=a.version,
                     out_dir=Path(a.out_dir) if a.out_dir else None,
                     review_budget=a.review_budget, hyper=hyper, compare=[Path(c) for c in a.compare],
                     force=a.force, log=lambda m: print(f"[train] {m}", file=sys.stderr, flush=True),
                     mapping=mapping, order=a.order, max_reject_share=a.max_reject_share,
                     rejects_path=Path(a.rejects) if a.rejects else None, periods=periods, top_k=a.top_k,
                     days=a.days, label_delay=delay, cache_dir=_feature_cache(a), tune=a.tune, rings=a.rings)
    except (tr.TrainError, IngestError) as e:
        raise SystemExit(f"riskstream train: {e}")
    print(tr.render(res.summary))
    if a.json:
        print(orjson.dumps(res.summary).decode())
    return 0


LABEL_DELAY_HELP = ("when a label reaches the label features, the same rule for train, replay and score: this long "
                    "after its event for every label (e.g. 7d), or none [default: the label's arrival_ts (the "
                    "generator's 1-14 days), else 7d]")


NO_CACHE_HELP = ("replay the input even when the feature cache (<home>/cache/features) holds its vectors for the "
                 "same file, labels, settings, spec and code")


def add_offline_feature_flags(p) -> None:
    """The flags replay and score share: labels with arrival times, the input mapping, the feature settings."""
    p.add_argument("--labels", metavar="FILE",
                   help="labels for the label features, the format train reads (JSON lines: event_id and fraud, "
                        "or a label as on the labels topic, optionally with arrival_ts in epoch ms); a label "
                        "counts from the first event at or after its arrival")
    p.add_argument("--label-delay", default=None, metavar="DURATION|none", help=LABEL_DELAY_HELP)
    p.add_argument("--no-feature-cache", action="store_true", help=NO_CACHE_HELP)
    add_input_flags(p)
    add_job_flags(p, only=("allowed_lateness_ms", "dedup_horizon_ms"),
                  title="the job's settings that shape features (flag, else environment variable, else default)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="riskstream", description="Real-time risk decisions on Flink.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("jars", help="fetch the jars in pom-deps.txt through Maven (idempotent)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_jars)

    port = int(env_or("kafka_port", 9092))
    p = sub.add_parser("stack", help="the local single-node Kafka broker (KRaft)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--port", type=int, default=port, help=f"broker port on 127.0.0.1 [env RISKSTREAM_KAFKA_PORT; "
                                                          f"default {port}]")
    p.add_argument("--partitions", type=int, default=2)
    add_setting(p, "events_topic")
    add_setting(p, "decisions_topic")
    add_setting(p, "dead_letter_topic")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_stack)

    bs = env_or("bootstrap_servers", f"127.0.0.1:{port}")
    p = sub.add_parser("generate", help="write seeded synthetic labelled traffic to Kafka (or a file)")
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=0, help="events per second (0: as fast as possible)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fraud-share", type=float, default=0.12)
    p.add_argument("--bad-share", type=float, default=0.0, help="share of malformed records")
    p.add_argument("--days", type=positive_days, default=None, metavar="N",
                   help="spread the events' times over N simulated days and add the slow scenarios (compromised "
                        "devices, slow card testing) [default: 5 events per simulated second]")
    p.add_argument("--rings", action="store_true",
                   help="add fraud rings that evade one-hop features, and households, offices and public wifi "
                        "in normal traffic (docs/features.md#graph-features) [default: off]")
    p.add_argument("--bootstrap-servers", default=bs, help="[env RISKSTREAM_BOOTSTRAP_SERVERS]")
    add_setting(p, "events_topic", "--topic", help="topic the events go to (the job's events topic)")
    p.add_argument("--labels", default=str(paths.home() / "labels.jsonl"),
                   help="where ground-truth labels go (JSON lines: event_id, scenario, fraud, arrival_ts, ...)")
    p.add_argument("--output", help="write events to this JSON-lines file instead of Kafka")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("run", help="run the decision job (local MiniCluster)")
    add_job_flags(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("consume", help="read decisions with isolation_level=read_committed")
    p.add_argument("--bootstrap-servers", default=bs, help="[env RISKSTREAM_BOOTSTRAP_SERVERS]")
    add_setting(p, "decisions_topic", "--topic", help="topic to read (the job's decisions topic)")
    p.add_argument("--follow", "-f", action="store_true", help="keep tailing")
    p.add_argument("--decision", choices=["allow", "review", "block"], help="only this kind")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--group-id", default=None, help="commit offsets under this consumer group")
    p.add_argument("--idle-ms", type=int, default=5000, help="without --follow, stop after this long idle")
    p.set_defaults(fn=cmd_consume)

    p = sub.add_parser("demo", help="end to end on the embedded defaults, then print a summary")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON on the last line")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=500.0,
                   help="events per second sent (the job sustains ~0.9-1k/s at p=1 here; above that, latency "
                        "is queueing)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bad-share", type=float, default=0.005)
    p.add_argument("--port", type=int, default=port, help="[env RISKSTREAM_KAFKA_PORT]")
    p.add_argument("--keep-broker", action="store_true", help="leave the broker running afterwards")
    p.add_argument("--review", action="store_true",
                   help="then leave the review service running on the demo's cases (prints its URL and a "
                        "one-time login; Ctrl-C stops it and the broker)")
    p.add_argument("--review-port", type=int, default=int(env_or("review_port", 8765)),
                   help="port of the review pages with --review [env RISKSTREAM_REVIEW_PORT]")
    p.add_argument("--deadline", type=float, default=900, metavar="SECONDS",
                   help="seconds to wait, once the job runs, for every event to end as a decision or a dead letter "
                        "[default 900]")
    p.add_argument("--challenger", default=DEMO_CHALLENGER,
                   help="shadow model sent on the control topic ('' for none; with --ab none unless given)")
    p.add_argument("--ab", action="store_true",
                   help="a 50/50 traffic split: half the users decided by --ab-model, the champion the rest; "
                        "the summary ends with the report's per-arm lines")
    p.add_argument("--ab-model", default="models/risk_gbdt_v2.onnx", help="with --ab: the other arm's model")
    p.add_argument("--rings", action="store_true",
                   help="add the generator's fraud rings and the households, offices and public wifi of normal "
                        "traffic (with RISKSTREAM_GRAPH_FEATURES=1 the graph features and model see them)")
    p.add_argument("--report", default=str(paths.home() / "reports" / "demo.html"),
                   help="write the effectiveness report here ('' for none)")
    add_job_flags(p, skip=("bootstrap_servers", "starting_offsets", "bounded"))
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("verify", help="audit: every event has exactly one decision or dead letter (read_committed)")
    p.add_argument("--bootstrap-servers", default=bs, help="[env RISKSTREAM_BOOTSTRAP_SERVERS]")
    add_setting(p, "events_topic")
    add_setting(p, "decisions_topic")
    add_setting(p, "dead_letter_topic")
    p.add_argument("--from-time", help="only events the broker received at or after this time (epoch ms or "
                                       "ISO-8601); outputs are read from this time on")
    p.add_argument("--to-time", help="only events received before this time")
    p.add_argument("--wait", type=float, default=0.0,
                   help="keep reading outputs up to this many seconds while some are missing (a running job "
                        "commits once per checkpoint)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON on the last line")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("chaos", help="fault injection: failures while the job runs, then the exactly-once audit")
    p.add_argument("--events", type=int, default=20_000, help="events fed (plus malformed records and producer "
                                                               "retries) [default 20000]")
    p.add_argument("--failures", type=int, default=4, help="failures injected, the kinds in turn [default 4]")
    p.add_argument("--kinds", default="", help="comma-separated subset of task-failure, kill-process, "
                                               "broker-restart, savepoint-resume, savepoint-crash, double-kill, "
                                               "broker-kill-commit, broker-stall, kill-both, second-start, "
                                               "poison-record, kill-in-savepoint, stale-restore (docs/exactly-"
                                               "once.md; default: all, in turn); with --cluster: "
                                               "taskmanager-kill, taskmanager-loss")
    p.add_argument("--rate", type=float, default=1000.0, help="events per second fed")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--parallelism", type=int, default=None,
                   help="[default 1; with --cluster 2, one TaskManager of one slot per subtask]")
    p.add_argument("--cluster", action="store_true",
                   help="run the job on a standalone cluster of its own (cluster up, submit) and lose TaskManagers "
                        "(kinds taskmanager-kill, taskmanager-loss) instead of the MiniCluster kinds")
    p.add_argument("--checkpoint-interval-ms", type=int, default=1000)
    p.add_argument("--port", type=int, default=None, help="broker port (default: a free one; the harness "
                                                           "starts and restarts its own broker)")
    p.add_argument("--deadline", type=float, default=3600, metavar="SECONDS",
                   help="give up after this many seconds [default 3600]")
    p.add_argument("--keep", action="store_true", help="keep the broker data, checkpoints and savepoints of a "
                                                       "clean run (by default only logs are kept)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON on the last line")
    p.set_defaults(fn=cmd_chaos)

    jm_help = "JobManager REST address host:port [default: the local cluster's, see `riskstream cluster status`]"
    p = sub.add_parser("cluster", help="a local standalone Flink cluster (JobManager + TaskManager)")
    p.add_argument("action", choices=["up", "down", "status", "add-taskmanager"],
                   help="add-taskmanager: start one more TaskManager on the running cluster with its configuration "
                        "(the replacement of a lost one takes its name); prints its name and pid")
    p.add_argument("--rest-port", type=int, default=None, help="REST/web port on 127.0.0.1 (default: a free one)")
    p.add_argument("--slots", type=int, default=2, help="task slots per TaskManager [default 2]")
    p.add_argument("--taskmanagers", type=int, default=int(env_or("taskmanagers", 1)),
                   help="TaskManager processes (each with --slots slots) [env RISKSTREAM_TASKMANAGERS; default 1]")
    p.add_argument("--state-backend", choices=["rocksdb", "hashmap"], default=env_or("state_backend", "rocksdb"),
                   help="the cluster's state backend: rocksdb (local disk, incremental checkpoints; millions of "
                        "keys) or hashmap (heap objects, full snapshots; small state) [env RISKSTREAM_STATE_BACKEND; "
                        "default rocksdb]")
    p.add_argument("--incremental-checkpoints", action=argparse.BooleanOptionalAction,
                   default=env_or("incremental_checkpoints", "true").lower() not in ("0", "false", "no"),
                   help="with rocksdb: upload only new files at each checkpoint [env RISKSTREAM_INCREMENTAL_CHECKPOINTS; "
                        "default on]")
    p.add_argument("--changelog", action=argparse.BooleanOptionalAction, default=None,
                   help="the changelog state backend over the chosen one (checkpoints upload the changes since the "
                        "last one, into the cluster's changelog/ folder; RocksDB's own files every 3 min); Flink "
                        "restores on it only in CLAIM mode, so `riskstream submit --from-savepoint` restores a private "
                        "copy and the savepoint stays; --no-changelog: RocksDB's incremental checkpoints alone (a job "
                        "can still turn it on with its own --changelog) [env RISKSTREAM_CHANGELOG; default on with "
                        "rocksdb, off with hashmap]")
    p.add_argument("--rocksdb-local-dir", default=env_or("rocksdb_local_dir", ""),
                   help="with rocksdb: local folder of the working files [env RISKSTREAM_ROCKSDB_LOCAL_DIR; default: "
                        "the cluster's tmp/ folder]")
    p.add_argument("--taskmanager-memory", default=env_or("taskmanager_memory", "2560m"),
                   help="total process memory of each TaskManager (taskmanager.memory.process.size) "
                        "[env RISKSTREAM_TASKMANAGER_MEMORY; default 2560m]")
    p.add_argument("--managed-memory", default=env_or("managed_memory", ""),
                   help="managed memory of each TaskManager: RocksDB's cache and write buffers, Python workers "
                        "(taskmanager.memory.managed.size) [env RISKSTREAM_MANAGED_MEMORY; default: 40 %% of Flink "
                        "memory]")
    p.add_argument("--taskmanager-heap", default=env_or("taskmanager_heap", ""),
                   help="task heap of each TaskManager (taskmanager.memory.task.heap.size; with it the process size "
                        "is derived, managed memory 512m unless given) [env RISKSTREAM_TASKMANAGER_HEAP]")
    p.add_argument("--flink-conf", action="append", default=None, metavar="KEY=VALUE",
                   help="any Flink setting of the cluster, applied last; repeatable [env RISKSTREAM_FLINK_CONF, "
                        "';'-separated]")
    p.add_argument("--deadline", type=float, default=120, metavar="SECONDS",
                   help="seconds `up` waits for the cluster to be ready (`add-taskmanager`: for the registration) "
                        "[default 120]")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(fn=cmd_cluster)

    p = sub.add_parser("submit", help="submit the decision job to a Flink cluster (flink run -d); prints its id")
    p.add_argument("--jobmanager", default=None, help=jm_help)
    p.add_argument("--from-savepoint", default=None, metavar="PATH",
                   help="restore from this savepoint or retained checkpoint (flink run -s)")
    p.add_argument("--allow-non-restored-state", action="store_true",
                   help="with --from-savepoint: skip savepoint state of removed operators")
    p.add_argument("--wait-running", action="store_true",
                   help="then wait until every task runs and a first checkpoint completed; print the time")
    p.add_argument("--deadline", type=float, default=180, metavar="SECONDS",
                   help="seconds --wait-running waits [default 180]")
    add_job_flags(p, skip=("rest_port",))
    p.set_defaults(fn=cmd_submit)

    job_help = ("a job name (its live run, found through the lineage in <riskstream home>/jobs/<job>/, with the REST "
                "address the run recorded) or a Flink job id (32 hex digits)")
    sp_dir = ("savepoint directory [default: <riskstream home>/jobs/<job>/savepoints for a job riskstream started "
              "here with a local checkpoint_dir; otherwise the cluster's execution.checkpointing.savepoint-dir]")
    jm_ref_help = ("JobManager REST address host:port [default: the one the job's run recorded in its lineage, "
                   "else the local cluster's]")
    fmt_default = None  # RISKSTREAM_SAVEPOINT_FORMAT is read (and checked) by submit.choose_format
    fmt_help = ("the savepoint's format [env RISKSTREAM_SAVEPOINT_FORMAT; default: native when the job runs on "
                "rocksdb without the changelog, canonical otherwise]. native: the state backend's own files "
                "(RocksDB's copied as they are): fast to take and to restore at millions of users (3M users "
                "restored in seconds, not the minutes of a canonical one: docs/benchmarks.md), at any parallelism, "
                "but ONLY on the backend that wrote it, and one of a job with the changelog only without the "
                "changelog (Flink 2.2.1 would write checkpoints after it that it cannot restore, FLINK-39964). "
                "canonical: Flink's backend-independent format, rewritten key by key: slow at that size, but it "
                "restores anywhere (the way to switch backends) and the State Processor API reads it. A restore "
                "that cannot work is refused at start, saying what to do")
    p = sub.add_parser("savepoint", help="take a savepoint of a running job (it keeps running); prints its path")
    p.add_argument("job", metavar="JOB", help=job_help)
    p.add_argument("--jobmanager", default=None, help=jm_ref_help)
    p.add_argument("--dir", default=None, help=sp_dir)
    p.add_argument("--format", choices=("canonical", "native"), type=str.lower, default=fmt_default, help=fmt_help)
    p.add_argument("--deadline", type=float, default=300, metavar="SECONDS",
                   help="seconds to wait for the savepoint to complete [default 300]; a run that dies meanwhile "
                        "fails at once")
    p.set_defaults(fn=cmd_savepoint)

    p = sub.add_parser("cancel", help="stop a job with a savepoint (the upgrade path); prints the savepoint path "
                                      "(with --no-savepoint: cancel it and print its final state, CANCELED)")
    p.add_argument("job", metavar="JOB", help=job_help)
    p.add_argument("--jobmanager", default=None, help=jm_ref_help)
    p.add_argument("--dir", default=None, help=sp_dir)
    p.add_argument("--no-savepoint", action="store_true",
                   help="cancel without a savepoint (the job keeps its newest retained checkpoint)")
    p.add_argument("--format", choices=("canonical", "native"), type=str.lower, default=fmt_default, help=fmt_help)
    p.add_argument("--deadline", type=float, default=300, metavar="SECONDS",
                   help="seconds to wait for the savepoint and for the job to end [default 300]; a run that dies "
                        "meanwhile fails at once")
    p.set_defaults(fn=cmd_cancel)

    p = sub.add_parser("snapshots", help="list a job's lineage: runs, completed and half-written checkpoints and "
                                         "savepoints (age, run, source offsets), and what --restore-from latest "
                                         "would pick and why")
    p.add_argument("job", metavar="JOB", help="the job name (its folder <riskstream home>/jobs/<job>/)")
    p.add_argument("--json", action="store_true", help="also print the listing as JSON on the last line")
    p.set_defaults(fn=cmd_snapshots)

    p = sub.add_parser("report", help="the analyst's report: one self-contained HTML file about decisions vs labels")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--decisions", metavar="FILE", help="decisions as JSON lines (default: read the topic)")
    add_setting(src, "decisions_topic", help="read this topic with read_committed up to its current end offsets")
    p.add_argument("--bootstrap-servers", default=bs, help="[env RISKSTREAM_BOOTSTRAP_SERVERS]")
    p.add_argument("--labels", metavar="FILE", help="ground-truth labels as JSON lines (riskstream generate --labels); "
                                                   "without it, labels the records carry (riskstream score)")
    p.add_argument("--review-budget", type=float, default=0.01, help="share of events the review team can look at")
    p.add_argument("--top-k", type=int, default=100,
                   help="entities reviewed per day for precision top-k per day (card precision) [default 100]")
    p.add_argument("--time-axis", choices=["event_ts", "decided_at"], default="event_ts",
                   help="timestamp of the decision-rate buckets")
    p.add_argument("--split-key", default="user",
                   help="what a traffic split in the records was keyed by (an entity of the spec: user, device, "
                        "ip, payment): the unit of the per-arm intervals [default user]")
    p.add_argument("--models-dir", default=str(paths.models_dir()),
                   help="where the deciding models' specs are (<model_version>.json), for the drift check "
                        "[default the project's models/]")
    p.add_argument("--out", help="HTML file to write [default: <riskstream home>/reports/report-<time>.html]")
    p.add_argument("--json", action="store_true", help="also print the headline figures as JSON on the last line")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("train", help="train a model on labelled history (time split), export ONNX + spec + card")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", metavar="FILE", help="labelled history: events as JSON lines, .csv or .parquet "
                                                       "(needs --labels or a label column in the mapping)")
    src.add_argument("--generate", type=int, metavar="N", help="train on N generated events instead")
    p.add_argument("--labels", metavar="FILE", help="JSON lines keyed by event_id with fraud true/false, 0/1 or "
                                                   "yes/no (as `riskstream generate` writes)")
    p.add_argument("--seed", default="101,102,103,104",
                   help="with --generate: generator seed, or a comma-separated list (one stream per seed; N is "
                        "split evenly) [default 101,102,103,104]")
    p.add_argument("--version", required=True, help="model name: files <out-dir>/<version>.onnx/.json/.md and "
                                                    "the model_version in every decision")
    p.add_argument("--out-dir", default=None, help="folder of the model's files [default <riskstream home>/models/"
                                                   "<version>, never beside the shipped models]")
    p.add_argument("--review-budget", type=float, default=0.01,
                   help="share of events the team can review (top by score) for recall/precision [default 0.01]")
    g = p.add_argument_group("split by dates (UTC dates or ISO-8601 times; -until is exclusive); without them the "
                             "earliest 80 % of the rows by event time train")
    g.add_argument("--train-from", metavar="DATE", help="first day of the training period [default: the start]")
    g.add_argument("--train-until", metavar="DATE", help="end of the training period (exclusive)")
    g.add_argument("--test-from", metavar="DATE", help="start of the test period [default: --train-until + --gap]")
    g.add_argument("--test-until", metavar="DATE", help="end of the test period (exclusive) [default: the end]")
    g.add_argument("--gap", default="0d", help="time between training and test, e.g. 7d (the label delay): rows "
                                               "in it are neither trained on nor evaluated [default 0d]")
    p.add_argument("--top-k", type=int, default=100,
                   help="entities reviewed per day for precision top-k per day (card precision) [default 100]")
    p.add_argument("--days", type=float, default=None,
                   help="with --generate: spread each seed's traffic over this many days, with the slow scenarios "
                        "(compromised devices, slow card testing) [default: the generator's 5 events/s]")
    p.add_argument("--rings", action="store_true",
                   help="with --generate: add the fraud rings that evade one-hop features, and the households, "
                        "offices and public wifi of normal traffic (for a model with graph features: "
                        "RISKSTREAM_GRAPH_FEATURES=1)")
    p.add_argument("--label-delay", default=None, metavar="DURATION|none", help=LABEL_DELAY_HELP)
    p.add_argument("--no-feature-cache", action="store_true", help=NO_CACHE_HELP)
    p.add_argument("--compare", action="append", default=[], metavar="MODEL.onnx",
                   help="also score the held-out rows with this model (champion/challenger); repeatable")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="choose the hyper-parameters from a small grid on a validation period: the latest 20 %% of "
                        "the training rows, with --gap before it; the choice is refitted on every training row "
                        "[default: on unless a hyper-parameter flag is given]; --no-tune fits the defaults")
    p.add_argument("--bags", type=int, default=None, metavar="N",
                   help="average the log-odds of N models that differ by seed (scikit-learn's early-stopping "
                        "holdout), exported as one tree ensemble [default: 5 with --tune, else 1]")
    p.add_argument("--max-iter", type=int, default=None, help="boosting rounds [default 100]")
    p.add_argument("--learning-rate", type=float, default=None, help="[default 0.1]")
    p.add_argument("--max-leaf-nodes", type=int, default=None, help="[default 15]")
    p.add_argument("--class-weight", choices=["balanced"], default=None,
                   help="weigh classes by inverse frequency (more recall at a fixed score threshold) [default none]")
    p.add_argument("--force", action="store_true", help="overwrite an existing model of this version")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON on the last line")
    add_input_flags(p, rejects_default="<out-dir>/<version>.rejects.jsonl")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("replay", help="offline: the job's features for a file of events (JSON lines, CSV, Parquet)")
    p.add_argument("--input", required=True, help="events as JSON lines (.jsonl), .csv or .parquet")
    p.add_argument("--output", required=True, help="JSON lines: event_id, ts, user_id, device_id, late, every "
                                                    "feature (and label, scenario with a label column)")
    add_offline_feature_flags(p)
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("bootstrap", help="warm start: build the job's window and label state from a history "
                                          "of events and labels, as a savepoint the job starts from; prints its path")
    p.add_argument("--input", help="history of events as JSON lines (.jsonl), .csv or .parquet, "
                                   "in arrival order (or --order sort); or --from-topic")
    p.add_argument("--from-topic", action="store_true",
                   help="the history from the job's topics instead (--events-topic, and --labels-topic's labels, "
                        "arrival = record timestamp), read_committed, up to their end offsets at the start")
    p.add_argument("--from-time", default=None, metavar="TIME",
                   help="with --from-topic: records from this record timestamp on (epoch ms or ISO-8601, no zone = "
                        "UTC) [default: the oldest kept]")
    p.add_argument("--to-time", default=None, metavar="TIME",
                   help="with --from-topic: records before this record timestamp [default: up to the end offsets]")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="a new folder for the savepoint [default: <home>/jobs/<job_name>/savepoints/bootstrap-<time>]")
    p.add_argument("--parallelism-write", type=int, default=2, help="parallelism of the savepoint writer [default 2]")
    p.add_argument("--labels", metavar="FILE",
                   help="labels, the format train, replay and score read (JSON lines: event_id and fraud, or a label "
                        "as on the labels topic, optionally with arrival_ts in epoch ms); a label is folded before "
                        "the first event at or after its arrival")
    p.add_argument("--label-delay", default=None, metavar="DURATION|none", help=LABEL_DELAY_HELP)
    add_input_flags(p)
    add_job_flags(p, only=("job_name", "allowed_lateness_ms", "dedup_horizon_ms", "out_of_orderness_ms",
                           "max_parallelism", "labels_topic", "stage_runtime", "bootstrap_servers", "events_topic",
                           "sasl_username", "sasl_password"),
                  title="the job's settings the state depends on (flag, else environment variable, else default)")
    p.set_defaults(fn=cmd_bootstrap)

    p = sub.add_parser("score", help="offline: per-event scores and decisions of a model over a file of events")
    p.add_argument("--input", required=True, help="events as JSON lines (.jsonl), .csv or .parquet")
    p.add_argument("--output", required=True, help="JSON lines, or CSV if it ends in .csv: event_id, ts, user_id, "
                                                    "device_id, payment_ref, event_type, score, decision, reasons, "
                                                    "late, model_version (and label, scenario)")
    p.add_argument("--model", default=None,
                   help="model .onnx with its .json spec beside it [default the shipped model of the spec: "
                        "risk_gbdt_v1, or risk_gbdt_graph_v1 with RISKSTREAM_GRAPH_FEATURES=1]")
    p.add_argument("--compare", action="append", default=[], metavar="MODEL.onnx",
                   help="also score every event with this model in the same pass (repeatable): columns "
                        "score_<version>, decision_<version> per row")
    add_offline_feature_flags(p)
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("control", help="live change under a running job: champion or challenger model, rules, "
                                       "or a traffic split (A/B test)")
    p.add_argument("what", choices=["champion", "challenger", "rules", "split"])
    p.add_argument("--path", help="model .onnx (its .json spec beside it) as the TaskManagers see it")
    p.add_argument("--remove", action="store_true", help="challenger only: stop shadow scoring")
    p.add_argument("--file", help="rules: JSON file with {version, rules: [...]} or a list of rules")
    p.add_argument("--version", help="rules: version name (else the file's); split: the experiment's name "
                                     "[default split-<unix time>]")
    p.add_argument("--arm", action="append", metavar="NAME=SHARE",
                   help="split: an arm and its share of the traffic (repeatable; the champion keeps the rest, "
                        "or give champion=SHARE and make them add up to 1)")
    p.add_argument("--model", action="append", metavar="NAME=PATH", help="split: the model .onnx of an arm")
    p.add_argument("--thresholds", action="append", metavar="NAME=REVIEW,BLOCK",
                   help="split: an arm's own score thresholds [default the job's]")
    p.add_argument("--key", default="user", help="split: the entity whose key picks the arm [default user]")
    p.add_argument("--salt", default="", help="split: another salt reshuffles the users between arms")
    p.add_argument("--end", action="store_true", help="split: end the split (the champion decides everything)")
    p.add_argument("--bootstrap-servers", default=bs, help="[env RISKSTREAM_BOOTSTRAP_SERVERS]")
    add_setting(p, "control_topic", "--topic")
    p.set_defaults(fn=cmd_control)

    p = sub.add_parser("rollout", help="a canary: move a model through traffic steps while guardrails against the "
                                       "champion hold; a breach rolls back by itself (docs/models.md)")
    p.add_argument("action", choices=["start", "resume", "status", "promote", "rollback"],
                   help="start: a new rollout, its controller running here until it ends; resume: carry on a "
                        "rollout whose controller is gone; status; promote: the candidate becomes the champion "
                        "and the split ends; rollback: the split ends")
    p.add_argument("--model", help="start: the candidate .onnx (its .json spec beside it), as the TaskManagers see it")
    p.add_argument("--steps", default="1,5,25,100", help="start: the candidate's share of the users at each step, "
                                                       "percent, increasing [default 1,5,25,100]")
    p.add_argument("--every", default="30m", help="start: the least time at each step, e.g. 30m, 2h, 20s "
                                                  "[default 30m]")
    p.add_argument("--guardrails", default="",
                   help="start: NAME=VALUE,... of block (pp, default 2), review (pp, 3), score-psi (0.5, or off), "
                        "drift-psi (0.25, or off), drift-margin (0.1), errors (0), min-events (500 per arm), "
                        "confidence (0.99)")
    p.add_argument("--thresholds", metavar="REVIEW,BLOCK", help="start: the candidate's own score thresholds "
                                                                "[default the job's]")
    p.add_argument("--promote-at-end", action="store_true",
                   help="start: promote by itself when the last step held (default: wait for `rollout promote`)")
    p.add_argument("--id", help="start: the rollout's name [default ro-<unix time>]")
    p.add_argument("--reason", help="promote/rollback: recorded in the history")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between the controller's looks [default 1]")
    p.add_argument("--models-dir", default=str(paths.models_dir()),
                   help="where the champion's spec (<model_version>.json) is, for the drift check")
    p.add_argument("--json", action="store_true", help="status: the whole state as JSON")
    p.add_argument("--bootstrap-servers", default=bs, help="[env RISKSTREAM_BOOTSTRAP_SERVERS]")
    add_setting(p, "control_topic")
    add_setting(p, "decisions_topic")
    add_setting(p, "dead_letter_topic")
    p.set_defaults(fn=cmd_rollout)

    p = sub.add_parser("features", help="print the feature spec")
    p.add_argument("--json", action="store_true",
                   help="the whole spec for another runtime: entities, buckets, features, lateness, sketch")
    add_setting(p, "allowed_lateness_ms")
    p.set_defaults(fn=cmd_features)

    p = sub.add_parser("review", help="the review queue: a web service where analysts work the review decisions "
                                      "and their verdicts go to the labels topic")
    p.add_argument("action", choices=["serve", "ingest", "add-user", "user"],
                   help="serve: the pages and the consumer; ingest: the consumer only; add-user: an analyst; "
                        "user disable|enable|reset-password|set-role|set-timezone NAME: an analyst's access")
    p.add_argument("username", nargs="?", help="add-user: the analyst's user name; user: disable, enable or "
                                               "reset-password")
    p.add_argument("user_name", nargs="?", metavar="NAME", help="user ...: the analyst's user name")
    p.add_argument("--role", choices=["analyst", "lead", "admin"], default=None,
                   help="add-user (default analyst), user set-role: analyst (works cases), lead (also decides "
                        "escalated cases, approves overturned blocks, reopens, assigns, reads the audit trail) or "
                        "admin (as lead)")
    p.add_argument("--timezone", default=None, metavar="ZONE",
                   help="add-user, user set-timezone: the analyst's time zone, an IANA name (e.g. Europe/Paris) "
                        "[default UTC]")
    p.add_argument("--password-stdin", action="store_true", help="add-user, user reset-password: read the password "
                                                                   "from stdin (else prompt; empty: generate one)")
    default_db = env_or("review_db", "sqlite:///" + str(paths.home() / "review" / "review.db"))
    p.add_argument("--db", default=default_db, help="database URL: sqlite:///path.db, or "
                                                    "postgresql://user@host:port/dbname (password from PGPASSWORD "
                                                    "or ~/.pgpass) [env RISKSTREAM_REVIEW_DB; default a SQLite "
                                                    "file under the riskstream home]")
    p.add_argument("--host", default="127.0.0.1", help="address the pages listen on")
    p.add_argument("--port", type=int, default=int(env_or("review_port", 8765)), help="[env RISKSTREAM_REVIEW_PORT]")
    p.add_argument("--bootstrap-servers", default=bs, help="[env RISKSTREAM_BOOTSTRAP_SERVERS]")
    add_setting(p, "decisions_topic")
    add_setting(p, "events_topic", help="events topic, for the event fields on case pages ('' for none)")
    add_setting(p, "control_topic", help="control topic, for the conditions of live rule sets ('' for none)")
    add_setting(p, "labels_topic", help="where verdicts go as labels")
    p.add_argument("--start", choices=["earliest", "latest"], default="earliest",
                   help="where a partition with no stored offset starts")
    p.add_argument("--history-days", type=float, default=7.0, help="keep decision history this long")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind TLS)")
    p.set_defaults(fn=cmd_review)

    p = sub.add_parser("bench", help="the job end to end against a plain Python loop, Quix Streams and the same job scored in Java "
                                     "on one private broker; throughput, latency, pure-core costs")
    p.add_argument("--json", action="store_true", help="also print the results as JSON on the last line")
    p.add_argument("--events", type=int, default=150_000, help="events in the preloaded backlog")
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--latency-seconds", type=float, default=30.0,
                   help="length of each half-rate latency run (one per profile: default, low-latency)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--contenders", default="python,quix,java",
                   help="baselines to run, comma-separated (python, quix, java; '' for none)")
    p.add_argument("--checkpoint-interval-ms", type=int, default=None, help="default: the job's")
    p.add_argument("--keep", action="store_true", help="keep the broker data and checkpoints")
    p.add_argument("--keys", default=None, metavar="USERS",
                   help="instead: the key-count benchmark (benchmarks/scale.py) at these user counts, e.g. "
                        "100k,1M,3M (about 3.5 keys per user): events/s, checkpoint duration and size, heap, full GCs, "
                        "then restore time from a savepoint and latency with the state held, per state backend")
    p.add_argument("--backends", default="hashmap,rocksdb,rocksdb+changelog",
                   help="with --keys: backends to compare (hashmap; rocksdb: the production default, incremental "
                        "checkpoints; rocksdb+changelog: the changelog over it; rocksdb+nobloom)")
    p.add_argument("--heap", default="6g", help="with --keys: -Xmx of each run's JVM")
    p.add_argument("--held-seconds", type=float, default=30.0,
                   help="with --keys: after each load, stop it with a savepoint, restore a fresh job from it and feed "
                        "it --held-rate events/s for this long: restore time, latency p50/p99 with the state held, "
                        "full GCs, live heap; 0 skips it [default 30]")
    p.add_argument("--held-rate", type=float, default=2000.0, help="with --keys: events/s of that phase [2000]")
    p.add_argument("--savepoint-format", choices=("canonical", "native"), default="canonical",
                   help="with --keys: the format of the load's savepoint: canonical (what riskstream cancel and "
                        "savepoint take of a job with the changelog) or native (the state backend's own files; "
                        "their --format native) [canonical]")
    p.add_argument("--split", action="store_true",
                   help="instead: the throughput cost of a 2-arm traffic split (50 %% risk_gbdt_v2) against no "
                        "split on the same backlog, --split-rounds times each, alternating")
    p.add_argument("--graph", action="store_true",
                   help="instead: the job with the graph features off and on (RISKSTREAM_GRAPH_FEATURES, each with "
                        "its shipped model) draining one backlog with the rings, --split-rounds times each, "
                        "alternating, then p50/p99 of each fed live at half the slower rate for --latency-seconds")
    p.add_argument("--split-rounds", type=int, default=2,
                   help="with --split, --state or --graph: runs of each case [default 2]")
    p.add_argument("--state", default=None, metavar="BACKENDS",
                   help="instead: the whole job on each state backend (hashmap, rocksdb, rocksdb+changelog: the "
                        "production configuration) draining one backlog while it holds --held-users other users' "
                        "state (bootstrapped), --split-rounds times each, alternating; the ratio of the medians to "
                        "the first's (e.g. hashmap,rocksdb+changelog)")
    p.add_argument("--held-users", default="100k", help="with --state: users whose state the job holds [100k]")
    p.set_defaults(fn=cmd_bench)
    return ap


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Pitfall: Python's default SIGTERM kills the process without unwinding, so a `demo`, `bench` or `chaos`
    stopped by `kill` or `timeout` would leave its private broker and Flink processes behind. SIGTERM
    becomes SystemExit(143) here (once, in the main thread): every ``finally`` runs its clean-up. Commands
    that serve until stopped (`review serve`) install their own graceful handler over it."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
