package io.riskstream.flink.graph;

import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

import io.riskstream.flink.aggregates.StateBytes;

/**
 * A key's graph label store (udfs.graph.fold_label): its labelled-fraud events {ident: (user, event time)}
 * in insertion order (the order decides which of equal oldest times the cap drops: the first, as Python's
 * min), and the wall-clock time of its last label (the processing-time TTL, as {@code KnownFraud.at}).
 * Encoded as: at | n | n x (ident, user as utf8 length + bytes, zigzag event time) (varints).
 */
public final class GraphLabels {
    public long at;
    public final LinkedHashMap<String, Object[]> lab = new LinkedHashMap<>(); // ident -> {user, Long ts}

    public boolean isEmpty() {
        return lab.isEmpty();
    }

    /** fold_label: a fraud label (re-)adds the event at the end, any other removes it; then the events older
     * than the newest by more than {@code keepMs} go, and the oldest while more than {@code cap} remain. */
    public void fold(String ident, String user, long eventTs, boolean fraud, long keepMs, int cap) {
        lab.remove(ident);
        if (!fraud) {
            return;
        }
        lab.put(ident, new Object[] {user, eventTs});
        long newest = Long.MIN_VALUE;
        for (Object[] e : lab.values()) {
            newest = Math.max(newest, (Long) e[1]);
        }
        long floor = newest - keepMs;
        lab.values().removeIf(e -> (Long) e[1] < floor);
        while (lab.size() > cap) {
            String oldest = null;
            long min = Long.MAX_VALUE;
            for (Map.Entry<String, Object[]> e : lab.entrySet()) {
                long t = (Long) e.getValue()[1];
                if (oldest == null || t < min) { // the first of equal minima
                    min = t;
                    oldest = e.getKey();
                }
            }
            lab.remove(oldest);
        }
    }

    /** label_fraud: {user: newest labelled-fraud event time}; empty for a null store. */
    public static Map<String, Long> fraudByUser(GraphLabels g) {
        Map<String, Long> out = new HashMap<>();
        if (g != null) {
            for (Object[] e : g.lab.values()) {
                out.merge((String) e[0], (Long) e[1], Math::max);
            }
        }
        return out;
    }

    /** UserPart.step: the user's newest known-fraud time, {@code noFraud} without one. */
    public static long fraudOf(GraphLabels g, String user, long noFraud) {
        long best = noFraud;
        if (g != null) {
            for (Object[] e : g.lab.values()) {
                if (user.equals(e[0]) && (Long) e[1] > best) {
                    best = (Long) e[1];
                }
            }
        }
        return best;
    }

    public byte[] encode() {
        StateBytes.Out o = new StateBytes.Out();
        o.v(at);
        o.v(lab.size());
        for (Map.Entry<String, Object[]> e : lab.entrySet()) {
            o.str(e.getKey());
            o.str((String) e.getValue()[0]);
            o.v(StateBytes.zz((Long) e.getValue()[1]));
        }
        return o.toArray();
    }

    public static GraphLabels decode(byte[] data) {
        if (data == null) {
            return null;
        }
        StateBytes.In in = new StateBytes.In(data);
        GraphLabels g = new GraphLabels();
        g.at = in.v();
        int n = (int) in.v();
        for (int i = 0; i < n; i++) {
            String ident = in.str();
            String user = in.str();
            g.lab.put(ident, new Object[] {user, StateBytes.unzz(in.v())});
        }
        return g;
    }
}
