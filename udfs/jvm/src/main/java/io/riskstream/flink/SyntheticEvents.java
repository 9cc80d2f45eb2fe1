package io.riskstream.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/**
 * Event number {@code i} as a chain record Row, for the key-count benchmark (benchmarks/scale.py): a
 * deterministic stream over {@code users} users whose first {@code users} events each open a new user,
 * device, ip and card, and whose later events come back to them. Fields are placed by name from the spec's
 * record_fields, so the Row is the one the parse stage emits. Not a traffic model: fraud scenarios and
 * realistic sharing are the generator's (riskstream/generator.py); this only makes keys, fast.
 */
public final class SyntheticEvents implements MapFunction<Long, Row> {
    private static final long serialVersionUID = 1L;
    private static final String[] TYPES = {"login", "payment", "place_order", "payment"};

    private final String specJson;
    private final long users;
    private final long startTs;
    private final long stepMs;
    private transient int arity, id, type, user, device, ip, amount, currency, ts, payment;

    public SyntheticEvents(String specJson, long users, long startTs, long stepMs) {
        this.specJson = specJson;
        this.users = users;
        this.startTs = startTs;
        this.stepMs = stepMs;
    }

    private void init() {
        EntitySpec s = EntitySpec.parse(specJson, "user");
        arity = s.arity;
        id = index(s, "event_id");
        type = index(s, "event_type");
        user = index(s, "user_id");
        device = index(s, "device_id");
        ip = index(s, "ip");
        amount = index(s, "amount");
        currency = index(s, "currency");
        ts = index(s, "ts");
        payment = index(s, "payment_ref");
    }

    private static int index(EntitySpec s, String name) {
        for (int i = 0; i < s.recordFields.length; i++) {
            if (s.recordFields[i].equals(name)) {
                return i;
            }
        }
        throw new IllegalArgumentException("no record field " + name);
    }

    @Override
    public Row map(Long seq) {
        if (arity == 0) {
            init();
        }
        long i = seq;
        long u = i % users;
        Row r = Row.withPositions(arity);
        String t = TYPES[(int) ((i / users + u) % TYPES.length)];
        r.setField(id, "e" + i);
        r.setField(type, t);
        r.setField(user, "u" + u);
        r.setField(device, "d" + u);
        r.setField(ip, "10." + (u >>> 16 & 255) + "." + (u >>> 8 & 255) + "." + (u & 255));
        r.setField(amount, 5.0 + (i % 200));
        r.setField(currency, "EUR");
        r.setField(ts, startTs + i * stepMs);
        if (t.equals("payment") || t.equals("place_order")) {
            r.setField(payment, "c" + u);
        }
        return r;
    }
}
