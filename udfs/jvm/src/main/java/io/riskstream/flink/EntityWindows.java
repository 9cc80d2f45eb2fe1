package io.riskstream.flink;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;

import org.apache.flink.types.Row;

/**
 * The window logic of one entity (udfs/windows.py EntityWindows, udfs/dedup.py, udfs.windows arm/cleanup)
 * over a {@link KeyState}, with the same arithmetic in the same order, so values are bit-identical.
 */
public final class EntityWindows {
    public static final long TIMER_GRID_MS = 60_000L;
    public static final int MAX_IDS_PER_KEY = 4096;

    final EntitySpec spec;
    private final double[] empty;

    public EntityWindows(EntitySpec spec) {
        this.spec = spec;
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

    private static Double num(Row ev, int field) {
        Object v = ev.getField(field);
        return v == null ? null : ((Number) v).doubleValue();
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
                b = new KeyState.Bucket(start, spec.slotKind[w]);
                st.buckets[w].add(b);
            }
            for (int s : fed) {
                int kind = spec.slotKind[w][s];
                if (kind == EntitySpec.CNT) {
                    b.n[s]++;
                } else if (kind == EntitySpec.NUM) {
                    Double v = num(ev, spec.slotField[w][s]);
                    if (v == null) {
                        continue;
                    }
                    b.n[s]++;
                    b.sum[s] += v;
                    if (v > b.max[s]) {
                        b.max[s] = v;
                    }
                    if (v < b.min[s]) {
                        b.min[s] = v;
                    }
                } else {
                    String v = (String) ev.getField(spec.slotField[w][s]);
                    if (v == null) {
                        continue;
                    }
                    Object acc = b.set[s];
                    if (acc instanceof byte[]) {
                        Hll.add((byte[]) acc, v);
                        continue;
                    }
                    int size;
                    if (acc instanceof String[]) { // small sets: an array, replaced (never changed) on growth
                        String[] a = (String[]) acc;
                        if (KeyState.contains(a, v)) {
                            continue;
                        }
                        if (a.length < KeyState.SMALL_SET) {
                            String[] grown = java.util.Arrays.copyOf(a, a.length + 1);
                            grown[a.length] = v;
                            acc = grown;
                            size = grown.length;
                        } else {
                            HashSet<String> set = new HashSet<>(a.length * 2 + 2);
                            java.util.Collections.addAll(set, a);
                            set.add(v);
                            acc = set;
                            size = set.size();
                        }
                        b.set[s] = acc;
                    } else {
                        @SuppressWarnings("unchecked")
                        HashSet<String> set = (HashSet<String>) acc;
                        if (!set.add(v)) {
                            continue;
                        }
                        size = set.size();
                    }
                    if (size > spec.hllThreshold) {
                        byte[] reg = new byte[Hll.M];
                        for (String x : KeyState.values(acc)) {
                            Hll.add(reg, x);
                        }
                        b.set[s] = reg;
                    }
                }
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
        int nf = spec.nFeatures();
        double[] out = new double[nf];
        for (int p = 0; p < nf; p++) {
            int kind = spec.planKind[p];
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
                int w = spec.planWidth[p];
                int s = spec.planSlot[p];
                long c = 0;
                for (KeyState.Bucket b : st.buckets[w]) {
                    if (lo <= b.start && b.start <= hi) {
                        c += b.n[s];
                    }
                }
                if (foldSelf && contains(spec.feeds[w][type], s)) {
                    c++;
                }
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
                continue;
            }
            int w = spec.planWidth[p];
            int s = spec.planSlot[p];
            long g = spec.widths[w];
            long hi = ts - Math.floorMod(ts, g);
            long lo = hi + g - spec.planHorizon[p];
            ArrayList<KeyState.Bucket> bs = st.buckets[w];
            boolean self = foldSelf && contains(spec.feeds[w][type], s);
            int field = spec.slotField[w][s];
            switch (spec.slotKind[w][s]) {
                case EntitySpec.CNT: {
                    long c = 0;
                    for (KeyState.Bucket b : bs) {
                        if (lo <= b.start && b.start <= hi) {
                            c += b.n[s];
                        }
                    }
                    if (self) {
                        c++;
                    }
                    out[p] = (double) c;
                    break;
                }
                case EntitySpec.NUM: {
                    long c = 0;
                    double sum = 0.0, mx = Double.NEGATIVE_INFINITY, mn = Double.POSITIVE_INFINITY;
                    for (KeyState.Bucket b : bs) {
                        if (lo <= b.start && b.start <= hi) {
                            c += b.n[s];
                            sum += b.sum[s];
                            if (b.max[s] > mx) {
                                mx = b.max[s];
                            }
                            if (b.min[s] < mn) {
                                mn = b.min[s];
                            }
                        }
                    }
                    if (self) {
                        Double v = num(ev, field);
                        if (v != null) {
                            c++;
                            sum += v;
                            if (v > mx) {
                                mx = v;
                            }
                            if (v < mn) {
                                mn = v;
                            }
                        }
                    }
                    if (kind == EntitySpec.P_SUM) {
                        out[p] = sum;
                    } else if (c == 0) {
                        out[p] = spec.missing;
                    } else if (kind == EntitySpec.P_MEAN) {
                        out[p] = sum / c;
                    } else if (kind == EntitySpec.P_MAX) {
                        out[p] = mx;
                    } else if (kind == EntitySpec.P_MIN) {
                        out[p] = mn;
                    } else {
                        out[p] = (double) c;
                    }
                    break;
                }
                default: {
                    String v = self ? (String) ev.getField(field) : null;
                    boolean exact = true;
                    int inRange = 0;
                    Object only = null;
                    for (KeyState.Bucket b : bs) {
                        if (lo <= b.start && b.start <= hi) {
                            inRange++;
                            only = b.set[s];
                            if (only instanceof byte[]) {
                                exact = false;
                                break;
                            }
                        }
                    }
                    if (exact && inRange <= 1) { // one bucket: its size (plus the late event if new to it)
                        int n = only == null ? 0 : KeyState.size(only);
                        if (v != null && (only == null || !KeyState.contains(only, v))) {
                            n++;
                        }
                        out[p] = (double) n;
                    } else if (exact) {
                        HashSet<String> u = new HashSet<>();
                        for (KeyState.Bucket b : bs) {
                            if (lo <= b.start && b.start <= hi) {
                                for (String x : KeyState.values(b.set[s])) {
                                    u.add(x);
                                }
                            }
                        }
                        if (v != null) {
                            u.add(v);
                        }
                        out[p] = (double) u.size();
                    } else {
                        byte[] reg = new byte[Hll.M];
                        for (KeyState.Bucket b : bs) {
                            if (lo <= b.start && b.start <= hi) {
                                if (!(b.set[s] instanceof byte[])) {
                                    for (String x : KeyState.values(b.set[s])) {
                                        Hll.add(reg, x);
                                    }
                                } else {
                                    Hll.mergeInto(reg, (byte[]) b.set[s]);
                                }
                            }
                        }
                        if (v != null) {
                            Hll.add(reg, v);
                        }
                        out[p] = Hll.roundHalfEven(Hll.estimate(reg));
                    }
                }
            }
        }
        return out;
    }
}
