package io.riskstream.flink;

import java.util.LinkedHashMap;
import java.util.Map;

import io.riskstream.flink.aggregates.StateBytes;

/**
 * A key's label state (udfs/chain.py EntityStep.fold_label): the known-fraud users of the signal
 * {user_id: newest fraud event ts}, the labelled-fraud events of the label features {event: event ts}
 * (udfs.labels.apply_fraud_label; an event is the label record's event_id field, which udfs.chain.label_record
 * fills with label_identity(user_id, event_id): ids are per user), both in insertion order, and the
 * wall-clock time of its last label.
 * Encoded as: at | n | n x (utf8 length, bytes, zigzag ts) | m | m x (utf8 length, bytes, zigzag ts)
 * (varints; state written before the label features has no second part).
 */
final class KnownFraud {
    static final long HORIZON_MS = 7L * 24 * 3600 * 1000;
    static final int MAX_USERS = 1000;
    static final int MAX_LABELS = 1000;

    long at;
    final LinkedHashMap<String, Long> users = new LinkedHashMap<>();
    final LinkedHashMap<String, Long> lab = new LinkedHashMap<>();

    boolean isEmpty() {
        return users.isEmpty() && lab.isEmpty();
    }

    /** udfs.labels.apply_fraud_label. */
    void applyFraudLabel(String eventId, long eventTs, boolean fraud, long keepMs) {
        lab.remove(eventId);
        if (!fraud) {
            return;
        }
        lab.put(eventId, eventTs);
        prune(lab, keepMs, MAX_LABELS);
    }

    /** udfs.labels.apply_label. */
    void apply(String user, long eventTs, boolean fraud) {
        if (!fraud) {
            users.remove(user);
            return;
        }
        Long cur = users.get(user);
        if (cur == null || eventTs > cur) {
            users.remove(user); // re-insert at the end
            users.put(user, eventTs);
        }
        prune(users, HORIZON_MS, MAX_USERS);
    }

    /**
     * udfs.labels._prune: drop the entries older than the newest by more than {@code horizonMs}, then the
     * oldest (the first of equal times, in insertion order) while more than {@code cap} remain.
     */
    private static void prune(Map<String, Long> times, long horizonMs, int cap) {
        long newest = Long.MIN_VALUE;
        for (long t : times.values()) {
            newest = Math.max(newest, t);
        }
        long floor = newest - horizonMs;
        times.values().removeIf(t -> t < floor);
        while (times.size() > cap) {
            String oldest = null;
            long min = Long.MAX_VALUE;
            for (Map.Entry<String, Long> e : times.entrySet()) {
                if (e.getValue() < min) { // the first of equal minima, like Python's min()
                    min = e.getValue();
                    oldest = e.getKey();
                }
            }
            times.remove(oldest);
        }
    }

    /** udfs.labels.known_fraud_users. */
    static double count(KnownFraud k, long ts) {
        if (k == null || k.users.isEmpty()) {
            return 0.0;
        }
        long lo = ts - HORIZON_MS;
        long n = 0;
        for (long t : k.users.values()) {
            if (lo <= t && t <= ts) {
                n++;
            }
        }
        return (double) n;
    }

    byte[] encode() {
        StateBytes.Out o = new StateBytes.Out();
        o.v(at);
        o.v(users.size());
        for (Map.Entry<String, Long> e : users.entrySet()) {
            o.str(e.getKey());
            o.v(KeyState.zz(e.getValue()));
        }
        o.v(lab.size());
        for (Map.Entry<String, Long> e : lab.entrySet()) {
            o.str(e.getKey());
            o.v(KeyState.zz(e.getValue()));
        }
        return o.toArray();
    }

    static KnownFraud decode(byte[] data) {
        if (data == null) {
            return null;
        }
        StateBytes.In in = new StateBytes.In(data);
        KnownFraud k = new KnownFraud();
        k.at = in.v();
        int n = (int) in.v();
        for (int i = 0; i < n; i++) {
            String u = in.str();
            k.users.put(u, KeyState.unzz(in.v()));
        }
        if (!in.atEnd()) {
            int m = (int) in.v();
            for (int i = 0; i < m; i++) {
                String e = in.str();
                k.lab.put(e, KeyState.unzz(in.v()));
            }
        }
        return k;
    }
}
