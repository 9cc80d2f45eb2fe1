package io.riskstream.flink.aggregates;

import java.io.Serializable;
import java.util.Map;

/**
 * A window aggregate: the JVM twin of the Python class of the same name in udfs/aggregates.py, with the same
 * shape. A window is a run of buckets; each bucket keeps one accumulator per slot (accumulator family, input
 * field, event-type filter) and leaves the window whole, so an aggregate never subtracts: a window's value is
 * {@link #result} of the {@link #merge} of its buckets' accumulators.
 *
 * <p>The spec document names the class of each aggregate it uses ("aggregates": {name: {"class",
 * "accumulator", "takes_field", "params"}}, udfs.chain.spec_document); {@link Aggregates#load} instantiates
 * {@code io.riskstream.flink.aggregates.<class>} with its no-argument constructor and refuses a class whose
 * family or field use differs from the Python class's. Aggregates of one family share their accumulator per
 * slot (Sum, Mean, Max, Min: one {@link Numeric.Acc}), so they must share initialize, add, merge, strings,
 * encode and decode (extend the family's base class).
 *
 * <p>Pitfalls: an instance serves one stage's thread (its spec is parsed per operator instance), and is
 * called per event and bucket: no allocation in {@link #add} beyond the accumulator's own growth, none in
 * {@link #merge} beyond its first window (it gets its previous one back as {@code reuse}). The bytes
 * {@link #encode} writes are the stage's savepoint format (tests/keystate_golden.json pins them): change them
 * only with a new state version in KeyState.
 */
public abstract class Aggregate implements Serializable {
    private static final long serialVersionUID = 1L;

    /** The family (Python: Aggregate.accumulator): aggregates of one family share a slot's accumulator. */
    public abstract String accumulator();

    /** Whether it reads an input field (an event whose field is null feeds it nothing); Count does not. */
    public abstract boolean takesField();

    /** The constants the spec document gives it (numbers as Long or Double, strings as String). */
    public void configure(Map<String, Object> params) {}

    /** A new bucket's empty accumulator. */
    public abstract Object initialize();

    /** One event's value folded into {@code acc} (null for an aggregate without a field); returns the
     * accumulator: the same object, or a replacement (a set that grew into a sketch). */
    public abstract Object add(Object acc, Object value);

    /**
     * The window accumulator of the first {@code n} of {@code accs} (the window's buckets, in bucket order;
     * never changed). {@code reuse}: the window accumulator this aggregate returned for the same slot and
     * window at the previous event, or null; overwrite and return it to save an allocation.
     */
    public abstract Object merge(Object reuse, Object[] accs, int n);

    /** The feature's value of a window accumulator {@link #merge} returned. */
    public abstract double result(Object window);

    /** Writes {@code acc} in the key's state bytes; a string goes in as its index in the key's string table
     * ({@link StateBytes.Strings#index}, which adds it on first sight). */
    public abstract void encode(Object acc, StateBytes.Out out, StateBytes.Strings table);

    /** Reads an accumulator {@link #encode} wrote ({@code strings}: the key's string table). */
    public abstract Object decode(StateBytes.In in, String[] strings);
}
