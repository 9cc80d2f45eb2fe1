package io.riskstream.flink;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;

import io.riskstream.flink.aggregates.Aggregate;

import org.apache.flink.types.Row;

/**
 * The window logic of one entity (udfs/windows.py EntityWindows, udfs/dedup.py, udfs.windows arm/cleanup)
 * over a {@link KeyState}, with the same arithmetic in the same order, so values are bit-identical. A
 * feature's value is its {@link Aggregate}'s result of the merge of its window's buckets.
 * Pitfall: one instance per thread (it reuses its window accumulators from one event to the next).
 */
public final class EntityWindows {
    public static final long TIMER_GRID_MS = 60_000L;
    public static final int MAX_IDS_PER_KEY = 4096;

    final EntitySpec spec;
    private final double[] empty;
    /** per read (EntitySpec.readWidth...): its window accumulator, reused from one event to the next. */
    private final Object[] windows;
    /** the accumulators of a window's buckets, gathered for a merge. */
    private Object[] gathered = new Object[64];

    public EntityWindows(EntitySpec spec) {
        this.spec = spec;
        this.windows = new Object[spec.readWidth.length];
        this.empty = values(new KeyState(spec), null, 0L, -1, false, 0L, false, null);
    }

    public double[] emptyValues() {
        return empty.clone();
    }

    public long expiresAt(KeyState st) {
        return st.last + spec.retention;
    }

    /** The key's state as an event at {@code ts} sees it: null once expired. */
    public KeyState live(KeyState st, long ts) {
        return st != null && ts >= expiresAt(st) ? null : st;
    }

    public boolean duplicate(KeyState st, String eventId, long ts, long horizonMs) {
        if (horizonMs == 0) {
            return false;
        }
        st = live(st, ts);
        if (st == null || st.ids == null) {
            return false;
        }
        Long seen = st.ids.get(eventId);
        return seen != null && seen >= Math.max(st.last, ts) - horizonMs;
    }

    /** The result of one event: the (new) state, its values, whether late, and a timer to register. */
    public static final class Step {
        public KeyState state;
        public double[] values;
        public boolean late;
        public boolean hasTimer;
        public long timer;
    }

    public int typeIndex(String eventType) {
        Integer t = spec.typeIndex.get(eventType);
        if (t == null) {
            throw new IllegalArgumentException("unknown event type " + eventType);
        }
        return t;
    }

    public Step step(KeyState st, Row ev, long horizonMs) {
        return step(st, ev, horizonMs, null);
    }

    /** One event; {@code lab}: the key's labelled-fraud events as known now ({@link KnownFraud#lab}), or null. */
    public Step step(KeyState st, Row ev, long horizonMs, Map<String, Long> lab) {
        long ts = (Long) ev.getField(spec.tsIndex);
        int type = typeIndex((String) ev.getField(spec.eventTypeIndex));
        boolean hasPrev;
        boolean restarted = false;
        long prevLast = 0;
        if (st == null || ts >= expiresAt(st)) {
            st = new KeyState(spec);
            st.first = ts;
            hasPrev = false;
        } else if (ts >= st.last + spec.fresh) {
            // quiet for longer than the undelayed features reach: a new key but for its delayed counts
            // (udfs.windows.EntityWindows.update)
            st.first = ts;
            for (ArrayList<KeyState.Bucket> b : st.buckets) {
                b.clear();
            }
            hasPrev = false;
            restarted = true;
        } else {
            hasPrev = true;
            prevLast = st.last;
        }
        boolean late = hasPrev && ts < prevLast - spec.lateness;
        if (!late) {
            add(st, ev, ts, type);
            st.last = hasPrev ? Math.max(prevLast, ts) : ts;
            if (ts < st.first) {
                st.first = ts;
            }
            if ((hasPrev && ts > prevLast) || restarted) { // the delayed counts age too
                evict(st);
            }
        }
        Step r = new Step();
        r.values = values(st, ev, ts, type, hasPrev, prevLast, late, lab);
        r.late = late;
        if (horizonMs != 0) {
            remember(st, (String) ev.getField(spec.eventIdIndex), ts, horizonMs);
        }
        // arm (udfs.windows.arm): one pending timer per key, registered when the key has none; cleanup
        // re-arms it at the key's current expiry when it fires early
        if (!st.hasTimer) {
            st.hasTimer = true;
            st.timer = timerFor(expiresAt(st));
            r.hasTimer = true;
            r.timer = st.timer;
        }
        r.state = st;
        return r;
    }

    /** udfs.windows.timer_for: the key's expiry itself (dropped when the watermark reaches it). */
    public static long timerFor(long expiry) {
        return expiry;
    }

    /** udfs.windows.grid_timer: the first grid point at or after {@code due} (label cleanup). */
    public static long gridTimer(long due) {
        return Math.floorDiv(due + TIMER_GRID_MS - 1, TIMER_GRID_MS) * TIMER_GRID_MS;
    }

    /** udfs.windows.cleanup: 0 keep, 1 clear, 2 rearm (st.timer updated; register it). */
    public int cleanup(KeyState st, long timestamp) {
        if (st == null) {
            return 0;
        }
        long expiry = expiresAt(st);
        if (expiry <= timestamp) {
            return 1;
        }
        if (st.hasTimer && st.timer == timestamp) {
            st.timer = timerFor(expiry);
            return 2;
        }
        return 0;
    }

    private void remember(KeyState st, String id, long ts, long horizonMs) {
        if (st.ids == null) {
            st.ids = new LinkedHashMap<>();
        }
        st.ids.put(id, ts); // an existing id keeps its place, as in a Python dict
        long cutoff = st.last - horizonMs;
        Iterator<Map.Entry<String, Long>> it = st.ids.entrySet().iterator();
        while (it.hasNext()) {
            Map.Entry<String, Long> oldest = it.next();
            if (oldest.getValue() >= cutoff && st.ids.size() <= MAX_IDS_PER_KEY) {
                break;
            }
            it.remove();
        }
    }

    private void add(KeyState st, Row ev, long ts, int type) {
        for (int d = 0; d < spec.dWidths.length; d++) { // every stored event, for the delayed shares' bases
            long g = spec.dWidths[d];
            long[] c = st.delayed[d].computeIfAbsent(ts - Math.floorMod(ts, g), k -> new long[1]);
            c[0]++;
        }
        for (int w = 0; w < spec.widths.length; w++) {
            int[] fed = spec.feeds[w][type];
            if (fed.length == 0) {
                continue;
            }
            long g = spec.widths[w];
            long start = ts - Math.floorMod(ts, g);
            KeyState.Bucket b = null;
            for (KeyState.Bucket x : st.buckets[w]) {
                if (x.start == start) {
                    b = x;
                    break;
                }
            }
            if (b == null) {
                b = new KeyState.Bucket(start, spec.slotAgg[w]);
                st.buckets[w].add(b);
            }
            Aggregate[] aggs = spec.slotAgg[w];
            int[] fields = spec.slotField[w];
            for (int s : fed) {
                Object v = null;
                if (fields[s] >= 0) {
                    v = ev.getField(fields[s]);
                    if (v == null) { // an optional field the event lacks is no value
                        continue;
                    }
                }
                b.acc[s] = aggs[s].add(b.acc[s], v);
            }
        }
    }

    private void evict(KeyState st) {
        long oldestOnTime = st.last - spec.lateness;
        for (int w = 0; w < spec.widths.length; w++) {
            long g = spec.widths[w];
            long keepFrom = oldestOnTime - Math.floorMod(oldestOnTime, g) + g - spec.maxHorizon[w];
            st.buckets[w].removeIf(b -> b.start < keepFrom);
        }
        for (int d = 0; d < spec.dWidths.length; d++) { // a delayed window reads from floor(t/g)*g + g - offset - H
            long g = spec.dWidths[d];
            long keepFrom = oldestOnTime - Math.floorMod(oldestOnTime, g) + g - spec.dReach[d];
            st.delayed[d].headMap(keepFrom).clear();
        }
    }

    private static boolean contains(int[] a, int x) {
        for (int v : a) {
            if (v == x) {
                return true;
            }
        }
        return false;
    }

    /** Feature values; {@code ev} null gives the values of no event over empty state. */
    private double[] values(KeyState st, Row ev, long ts, int type, boolean hasPrev, long prevLast, boolean foldSelf,
                            Map<String, Long> lab) {
        for (int r = 0; r < windows.length; r++) { // each window read from buckets, merged once
            int w = spec.readWidth[r];
            int s = spec.readSlot[r];
            long g = spec.widths[w];
            long hi = ts - Math.floorMod(ts, g);
            long lo = hi + g - spec.readHorizon[r];
            Aggregate agg = spec.slotAgg[w][s];
            ArrayList<KeyState.Bucket> bs = st.buckets[w];
            if (gathered.length < bs.size() + 1) {
                gathered = new Object[2 * bs.size() + 1];
            }
            int n = 0;
            for (KeyState.Bucket b : bs) {
                if (lo <= b.start && b.start <= hi) {
                    gathered[n++] = b.acc[s];
                }
            }
            if (foldSelf && contains(spec.feeds[w][type], s)) { // a late event counts itself, unstored
                int field = spec.slotField[w][s];
                Object v = field < 0 ? null : ev.getField(field);
                if (field < 0 || v != null) {
                    gathered[n++] = agg.add(agg.initialize(), v);
                }
            }
            windows[r] = agg.merge(windows[r], gathered, n);
            java.util.Arrays.fill(gathered, 0, n, null);
        }
        int nf = spec.nFeatures();
        double[] out = new double[nf];
        for (int p = 0; p < nf; p++) {
            int kind = spec.planKind[p];
            if (kind == EntitySpec.P_WINDOW) {
                out[p] = spec.planAgg[p].result(windows[spec.planRead[p]]);
                continue;
            }
            if (kind == EntitySpec.P_FRAUD_LABELS || kind == EntitySpec.P_FRAUD_SHARE) {
                long g = spec.planBucket[p];
                long hi = ts - Math.floorMod(ts, g) - spec.planOffset[p]; // offset before the event's bucket
                long lo = hi + g - spec.planHorizon[p];
                long n = 0;
                if (ev != null && lab != null) {
                    for (long t : lab.values()) {
                        long start = t - Math.floorMod(t, g);
                        if (lo <= start && start <= hi) {
                            n++;
                        }
                    }
                }
                if (kind == EntitySpec.P_FRAUD_LABELS) {
                    out[p] = (double) n;
                    continue;
                }
                int d = spec.planDelayed[p];
                if (d >= 0) { // stored events in the delayed window (never the event itself: its bucket is later)
                    long c = 0;
                    for (long[] x : st.delayed[d].subMap(lo, true, hi, true).values()) {
                        c += x[0];
                    }
                    long base = Math.max(c, n);
                    out[p] = base == 0 ? 0.0 : (double) n / (double) base;
                    continue;
                }
                // the key's events in the same window: the count its read merged (the late event included)
                long c = (long) spec.slotAgg[spec.readWidth[spec.planRead[p]]][spec.readSlot[spec.planRead[p]]]
                    .result(windows[spec.planRead[p]]);
                long base = Math.max(c, n);
                out[p] = base == 0 ? 0.0 : (double) n / (double) base;
                continue;
            }
            if (kind == EntitySpec.P_SINCE_PREV) {
                out[p] = hasPrev ? (double) Math.max(ts - prevLast, 0) : spec.missing;
                continue;
            }
            if (kind == EntitySpec.P_AGE) {
                out[p] = ev != null ? (double) (ts - Math.min(st.first, ts)) : spec.missing;
            }
        }
        return out;
    }
}
