package io.riskstream.flink;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.lib.NumberSequenceSource.NumberSequenceSplit;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiter;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiterStrategy;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.connector.datagen.source.GeneratorFunction;
import org.apache.flink.types.Row;

/**
 * Event number {@code i} as a chain record Row, for the key-count benchmark (benchmarks/scale.py): a
 * deterministic stream over {@code users} users whose first {@code users} events each open a new user,
 * device, ip and card, and whose later events come back to them (event {@code i} is user {@code i mod users}'s
 * {@code i / users}-th). Fields are placed by name from the spec's record_fields, so the Row is the one the
 * parse stage emits. Not a traffic model: fraud scenarios and realistic sharing are the generator's
 * (riskstream/generator.py); this only makes keys, fast.
 *
 * <p>{@link #source} paces it in phases: the first {@code fastCount} events as fast as the job takes them,
 * the next {@code rateCount} at {@code rate} per second, then none (the source idles and the job keeps its
 * state until it is stopped; a bounded input's end would fire every key's cleanup timer). The source's
 * position is its checkpointed state, so a job restored from a savepoint continues the sequence.
 * The source's sequence number {@code s} is event {@code s + firstIndex} (a job that starts without the
 * state of events below {@code firstIndex}: the benchmark's control of its restore check).
 * With {@code pacedAfterCheckpoint}, the paced phase starts at the first checkpoint this subtask sees
 * complete (so not before every task of a restored job runs and took part in one).
 * {@code arrived_at} is the wall-clock time the event was due: its generation in the fast phase, its slot in
 * the paced one (not when a backpressured source got round to it, so a stall counts in the latency).
 *
 * <p>Pitfall: one object is the generator, the rate-limiter strategy and the limiter: Java serialization
 * keeps it one object per source subtask, and the generator reads the due time its limiter just set.
 */
public final class SyntheticEvents
        implements GeneratorFunction<Long, Row>, RateLimiterStrategy<NumberSequenceSplit>, RateLimiter<NumberSequenceSplit> {
    private static final long serialVersionUID = 2L;
    private static final String[] TYPES = {"login", "payment", "place_order", "payment"};

    private final String specJson;
    private final long users;
    private final long startTs;
    private final long stepMs;
    private final long fastCount, rateCount, firstIndex;
    private final double rate;
    private final boolean pacedAfterCheckpoint;
    private transient int arity, id, type, user, device, ip, amount, currency, ts, payment, arrived;
    private transient long acquired; // permits handed out by this subtask's limiter
    private transient long dueMs; // arrived_at of the record the last permit was for
    private transient long pacedStartNanos, pacedStartMs;
    private transient ScheduledExecutorService timer;
    private transient CompletableFuture<Void> gate; // the first paced permit, waiting for a checkpoint
    private transient boolean checkpointed;

    public SyntheticEvents(String specJson, long users, long startTs, long stepMs, long fastCount, double rate,
                           long rateCount, boolean pacedAfterCheckpoint, long firstIndex) {
        if (users < 1 || stepMs < 1 || fastCount < 0 || rateCount < 0 || (rateCount > 0 && !(rate > 0))) {
            throw new IllegalArgumentException("SyntheticEvents: users and stepMs >= 1, counts >= 0, rate > 0 "
                    + "when rateCount > 0");
        }
        this.specJson = specJson;
        this.users = users;
        this.startTs = startTs;
        this.stepMs = stepMs;
        this.fastCount = fastCount;
        this.rate = rate;
        this.rateCount = rateCount;
        this.pacedAfterCheckpoint = pacedAfterCheckpoint;
        this.firstIndex = firstIndex;
    }

    /** The paced source over the sequence 0, 1, 2, ... (it never reaches the end of it). */
    public static DataGeneratorSource<Row> source(SyntheticEvents events, TypeInformation<Row> rowType) {
        return new DataGeneratorSource<>(events, Long.MAX_VALUE, events, rowType);
    }

    private void init() {
        EntitySpec s = EntitySpec.parse(specJson, "user");
        arity = s.arity;
        id = s.rowIndex("event_id");
        type = s.rowIndex("event_type");
        user = s.rowIndex("user_id");
        device = s.rowIndex("device_id");
        ip = s.rowIndex("ip");
        amount = s.rowIndex("amount");
        currency = s.rowIndex("currency");
        ts = s.rowIndex("ts");
        payment = s.rowIndex("payment_ref");
        arrived = s.rowIndex("arrived_at");
    }

    /** The event type of event {@code i}: user {@code u}'s k-th event is {@code TYPES[(k + u) % 4]}. */
    public static String typeOf(long i, long users) {
        return TYPES[(int) ((i / users + i % users) % TYPES.length)];
    }

    @Override
    public void open(SourceReaderContext context) {
        init();
    }

    @Override
    public void close() {
        if (timer != null) {
            timer.shutdownNow();
        }
    }

    @Override
    public Row map(Long seq) {
        if (arity == 0) {
            init();
        }
        if (acquired == 0) {
            throw new IllegalStateException("SyntheticEvents: a record without a permit of its own limiter; build "
                    + "the source with SyntheticEvents.source");
        }
        long i = seq + firstIndex;
        long u = i % users;
        Row r = Row.withPositions(arity);
        String t = typeOf(i, users);
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
        r.setField(arrived, dueMs);
        return r;
    }

    // -- pacing --------------------------------------------------------------------------------------

    @Override
    public RateLimiter<NumberSequenceSplit> createRateLimiter(int parallelism) {
        return this;
    }

    private void startPacing() {
        pacedStartNanos = System.nanoTime();
        pacedStartMs = System.currentTimeMillis();
        dueMs = pacedStartMs;
    }

    @Override
    public void notifyCheckpointComplete(long checkpointId) {
        if (!checkpointed) {
            checkpointed = true;
            if (gate != null) {
                startPacing();
                gate.complete(null);
            }
        }
    }

    @Override
    public CompletionStage<Void> acquire(int permits) {
        acquired += permits;
        long n = acquired; // the number, from 1, of the record this permit is for
        if (n <= fastCount) {
            dueMs = System.currentTimeMillis();
            return CompletableFuture.completedFuture(null);
        }
        if (n > fastCount + rateCount) {
            return new CompletableFuture<>(); // idle for good: the job holds its state until stopped
        }
        long j = n - fastCount - 1;
        if (j == 0) {
            if (pacedAfterCheckpoint && !checkpointed) {
                gate = new CompletableFuture<>();
                return gate;
            }
            startPacing();
        }
        long offsetNanos = (long) (j * 1e9 / rate);
        dueMs = pacedStartMs + offsetNanos / 1_000_000;
        long wait = pacedStartNanos + offsetNanos - System.nanoTime();
        if (wait <= 0) {
            return CompletableFuture.completedFuture(null);
        }
        if (timer == null) {
            timer = Executors.newSingleThreadScheduledExecutor(r -> {
                Thread th = new Thread(r, "synthetic-events-pacer");
                th.setDaemon(true);
                return th;
            });
        }
        CompletableFuture<Void> f = new CompletableFuture<>();
        timer.schedule(() -> f.complete(null), wait, TimeUnit.NANOSECONDS);
        return f;
    }
}
