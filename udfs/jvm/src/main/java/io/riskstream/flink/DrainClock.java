package io.riskstream.flink;

import java.util.Iterator;
import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.api.common.accumulators.Histogram;
import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.accumulators.LongMaximum;
import org.apache.flink.api.common.accumulators.LongMinimum;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.types.Row;

/**
 * The key-count benchmark's probe after the four entity stages (benchmarks/scale.py). Passes records through
 * and keeps, as accumulators, the wall-clock time of the first and the last record that passed
 * ({@code first_record_ms}, {@code last_record_ms}) and how many passed ({@code records}): the benchmark times
 * the drain of the events to the last record out of the stages.
 *
 * <p>Built with {@code held = true} (the job restored from the drain's savepoint and fed at a fixed rate), it
 * also keeps per record, in milliseconds against the wall clock:
 * <ul>
 * <li>{@code latency_ms}: from the record's {@code arrived_at} (when {@link SyntheticEvents} had it due) to
 * its way out of the stages;</li>
 * <li>{@code committed_latency_ms}: from {@code arrived_at} to the completion of the first checkpoint whose
 * barrier came after it (this operator's notifyCheckpointComplete): when an exactly-once Kafka sink in its
 * place would commit it, which is when a read_committed consumer sees it;</li>
 * <li>the restore check: the user, device and card features of event {@code i} against what the synthetic
 * sequence implies (user {@code u = i mod users}'s {@code k = i / users}-th event: {@code k + 1} events in 30
 * days, age {@code k * users * stepMs}; its card's age from its first card event), so a key whose state was
 * not restored counts in {@code restore_wrong_*}; {@code restore_key_groups} counts the checked users per
 * key group.</li>
 * </ul>
 * Pitfall: the committed latency's pending arrival times wait in memory until their checkpoint completes,
 * so only the paced phase keeps them.
 */
public final class DrainClock extends RichMapFunction<Row, Row> implements CheckpointedFunction, CheckpointListener {
    private static final long serialVersionUID = 2L;
    private final boolean held;
    private final String specJson;
    private final long users, stepMs;
    private final int userCount, userAge, deviceCount, deviceAge, paymentAge; // positions in values, -1: none
    private transient LongMinimum first;
    private transient LongMaximum last;
    private transient LongCounter records;
    private transient Histogram latency, committed, keyGroups;
    private transient LongCounter checked, checkedCards, wrongUser, wrongDevice, wrongCard;
    private transient int idIndex, valuesIndex, arrivedIndex, paymentIndex, maxParallelism;
    private transient long[] pending; // arrived_at of the records since the last barrier
    private transient int nPending;
    private transient TreeMap<Long, long[]> byCheckpoint;

    /** The drain clock alone. */
    public DrainClock() {
        this(false, null, 1, 1, -1, -1, -1, -1, -1);
    }

    /** The probe of the paced phase: latencies and the restore check (feature positions in the values). */
    public DrainClock(boolean held, String specJson, long users, long stepMs, int userCount, int userAge,
                      int deviceCount, int deviceAge, int paymentAge) {
        this.held = held;
        this.specJson = specJson;
        this.users = users;
        this.stepMs = stepMs;
        this.userCount = userCount;
        this.userAge = userAge;
        this.deviceCount = deviceCount;
        this.deviceAge = deviceAge;
        this.paymentAge = paymentAge;
    }

    @Override
    public void open(OpenContext openContext) {
        first = new LongMinimum();
        last = new LongMaximum();
        records = new LongCounter();
        getRuntimeContext().addAccumulator("first_record_ms", first);
        getRuntimeContext().addAccumulator("last_record_ms", last);
        getRuntimeContext().addAccumulator("records", records);
        if (!held) {
            return;
        }
        EntitySpec s = EntitySpec.parse(specJson, "user");
        idIndex = s.rowIndex("event_id");
        valuesIndex = s.valuesIndex;
        arrivedIndex = s.rowIndex("arrived_at");
        paymentIndex = s.rowIndex("payment_ref");
        maxParallelism = getRuntimeContext().getTaskInfo().getMaxNumberOfParallelSubtasks();
        latency = new Histogram();
        committed = new Histogram();
        keyGroups = new Histogram();
        checked = new LongCounter();
        checkedCards = new LongCounter();
        wrongUser = new LongCounter();
        wrongDevice = new LongCounter();
        wrongCard = new LongCounter();
        getRuntimeContext().addAccumulator("latency_ms", latency);
        getRuntimeContext().addAccumulator("committed_latency_ms", committed);
        getRuntimeContext().addAccumulator("restore_key_groups", keyGroups);
        getRuntimeContext().addAccumulator("restore_checked", checked);
        getRuntimeContext().addAccumulator("restore_checked_cards", checkedCards);
        getRuntimeContext().addAccumulator("restore_wrong_user", wrongUser);
        getRuntimeContext().addAccumulator("restore_wrong_device", wrongDevice);
        getRuntimeContext().addAccumulator("restore_wrong_card", wrongCard);
        pending = new long[1024];
        byCheckpoint = new TreeMap<>();
    }

    @Override
    public Row map(Row row) {
        long now = System.currentTimeMillis();
        first.add(now);
        last.add(now);
        records.add(1L);
        if (held) {
            Object at = row.getField(arrivedIndex);
            if (at != null) {
                long t = ((Number) at).longValue();
                latency.add(millis(now - t));
                if (nPending == pending.length) {
                    pending = java.util.Arrays.copyOf(pending, pending.length * 2);
                }
                pending[nPending++] = t;
            }
            check(row);
        }
        return row;
    }

    private static int millis(long ms) {
        return (int) Math.max(0, Math.min(Integer.MAX_VALUE, ms));
    }

    private void check(Row row) {
        double[] v = (double[]) row.getField(valuesIndex);
        long i = Long.parseLong(((String) row.getField(idIndex)).substring(1));
        long u = i % users;
        long k = i / users;
        double age = (double) k * users * stepMs;
        checked.add(1L);
        keyGroups.add(KeyGroupRangeAssignment.assignToKeyGroup("u" + u, maxParallelism));
        if ((userCount >= 0 && v[userCount] != k + 1) || (userAge >= 0 && v[userAge] != age)) {
            wrongUser.add(1L);
        }
        if ((deviceCount >= 0 && v[deviceCount] != k + 1) || (deviceAge >= 0 && v[deviceAge] != age)) {
            wrongDevice.add(1L);
        }
        if (paymentAge >= 0 && row.getField(paymentIndex) != null) {
            long firstCard = u % 4 == 0 ? 1 : 0; // user u's k-th event is a login when (k + u) % 4 == 0
            checkedCards.add(1L);
            if (v[paymentAge] != (double) (k - firstCard) * users * stepMs) {
                wrongCard.add(1L);
            }
        }
    }

    @Override
    public void snapshotState(FunctionSnapshotContext context) {
        if (held && nPending > 0) { // what passed before this barrier is what its checkpoint commits
            byCheckpoint.put(context.getCheckpointId(), java.util.Arrays.copyOf(pending, nPending));
            nPending = 0;
        }
    }

    @Override
    public void initializeState(FunctionInitializationContext context) {
        // no state: the probe's figures are this run's
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
        if (!held) {
            return;
        }
        long now = System.currentTimeMillis();
        Iterator<Map.Entry<Long, long[]>> it = byCheckpoint.headMap(checkpointId, true).entrySet().iterator();
        while (it.hasNext()) { // a later checkpoint also commits what an earlier, failed one held
            for (long t : it.next().getValue()) {
                committed.add(millis(now - t));
            }
            it.remove();
        }
    }
}
