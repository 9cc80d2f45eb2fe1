package io.riskstream.flink;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;

import io.riskstream.flink.aggregates.Aggregate;
import io.riskstream.flink.aggregates.StateBytes;
import io.riskstream.flink.aggregates.StateBytes.In;
import io.riskstream.flink.aggregates.StateBytes.Out;
import io.riskstream.flink.aggregates.StateBytes.Strings;

/**
 * One key's window state (the Python state dict of udfs/windows.py + udfs/dedup.py) and its compact byte
 * encoding. Layout (all integers LEB128 varints, signed ones zigzag):
 * <pre>
 * version(2) | flags (bit 0: the key may have label state) | last | last-first
 * | timer? (0 = none, else zigzag(timer-last)+1)
 * | strings: n, then n x (utf8 length, bytes)       -- every distinct-set value of the key, once
 * | per width of the spec: n buckets (creation order), per bucket zigzag((start - floor(last/g)*g)/g),
 *   then per slot its aggregate's accumulator ({@link Aggregate#encode}): count: n | numeric: n [, sum, max,
 *   min as 8-byte doubles when n > 0] | distinct: 2k then k string indices (exact set) | 1 + 2048 register
 *   bytes | 3 + m, m x (index, rank)
 * | ids: n, then n x (utf8 length, bytes, zigzag(ts-last))   -- dedup, in arrival order
 * | version 3 only, per delayed-count width of the spec (EntitySpec.dWidths): n buckets in ascending start,
 *   the first as zigzag((start - floor(last/g)*g)/g), each later one as (start - previous start)/g, each
 *   followed by its event count
 * </pre>
 * Version 1 (no flags byte) is read as "may have label state". Version 3 is written when the spec has
 * delayed fraud shares; versions 1 and 2 read with such a spec have no delayed counts yet.
 */
final class KeyState {
    long first, last, timer;
    boolean hasTimer;
    /**
     * Whether the key's label store may hold something: the stage reads that second state only then, one
     * state access per event saved on most keys (RocksDB reads each). Kept true whenever the store is
     * written while this state exists; a key without window state always reads its store.
     */
    boolean labels = true;
    final ArrayList<Bucket>[] buckets;
    LinkedHashMap<String, Long> ids;
    /** per delayed-count width (EntitySpec.dWidths): bucket start -> {stored events} (udfs.windows state "d"). */
    final TreeMap<Long, long[]>[] delayed;

    /** A bucket: its start and one accumulator per slot of its width (EntitySpec.slotAgg). */
    static final class Bucket {
        final long start;
        final Object[] acc;

        Bucket(long start, Aggregate[] aggs) {
            this.start = start;
            acc = new Object[aggs.length];
            for (int s = 0; s < aggs.length; s++) {
                acc[s] = aggs[s].initialize();
            }
        }

        Bucket(long start, int nSlots) {
            this.start = start;
            acc = new Object[nSlots];
        }
    }

    @SuppressWarnings("unchecked")
    KeyState(int nWidths, int nDelayed) {
        buckets = new ArrayList[nWidths];
        for (int w = 0; w < nWidths; w++) {
            buckets[w] = new ArrayList<>(4);
        }
        delayed = new TreeMap[nDelayed];
        for (int d = 0; d < nDelayed; d++) {
            delayed[d] = new TreeMap<>();
        }
    }

    KeyState(EntitySpec spec) {
        this(spec.widths.length, spec.dWidths.length);
    }

    // -- encoding ------------------------------------------------------------------------------------
    /** Scratch buffers of {@link #encode}, per thread: the header and string table, and the rest. */
    private static final ThreadLocal<Out[]> SCRATCH = ThreadLocal.withInitial(() -> new Out[] {new Out(), new Out()});

    byte[] encode(EntitySpec spec) {
        Out[] scratch = SCRATCH.get();
        Out head = scratch[0], o = scratch[1];
        head.reset();
        o.reset();
        // the buckets first, into the second buffer: their aggregates add the strings they write to the
        // table, which goes before them (in first-seen order: buckets in order, slots in order)
        Strings table = new Strings();
        for (int w = 0; w < buckets.length; w++) {
            long g = spec.widths[w];
            long base = last - Math.floorMod(last, g);
            Aggregate[] aggs = spec.slotAgg[w];
            o.v(buckets[w].size());
            for (Bucket b : buckets[w]) {
                o.v(zz((b.start - base) / g));
                for (int s = 0; s < aggs.length; s++) {
                    aggs[s].encode(b.acc[s], o, table);
                }
            }
        }
        if (ids == null) {
            o.v(0);
        } else {
            o.v(ids.size());
            for (Map.Entry<String, Long> e : ids.entrySet()) {
                o.str(e.getKey());
                o.v(zz(e.getValue() - last));
            }
        }
        for (int d = 0; d < delayed.length; d++) {
            long g = spec.dWidths[d];
            long prev = last - Math.floorMod(last, g);
            o.v(delayed[d].size());
            boolean first = true;
            for (Map.Entry<Long, long[]> e : delayed[d].entrySet()) {
                long rel = (e.getKey() - prev) / g;
                o.v(first ? zz(rel) : rel);
                o.v(e.getValue()[0]);
                prev = e.getKey();
                first = false;
            }
        }
        head.b(delayed.length > 0 ? 3 : 2);
        head.b(labels ? 1 : 0);
        head.v(last);
        head.v(last - first);
        head.v(hasTimer ? zz(timer - last) + 1 : 0);
        head.v(table.n);
        for (int i = 0; i < table.n; i++) {
            head.str(table.list[i]);
        }
        return head.concat(o);
    }

    static KeyState decode(byte[] data, EntitySpec spec) {
        if (data == null) {
            return null;
        }
        In in = new In(data);
        int version = in.b();
        if (version < 1 || version > 3) {
            throw new IllegalStateException("unknown state version " + version);
        }
        KeyState st = new KeyState(spec);
        st.labels = version == 1 || (in.b() & 1) != 0;
        st.last = in.v();
        st.first = st.last - in.v();
        long t = in.v();
        if (t != 0) {
            st.hasTimer = true;
            st.timer = st.last + unzz(t - 1);
        }
        String[] strings = new String[(int) in.v()];
        for (int i = 0; i < strings.length; i++) {
            strings[i] = in.str();
        }
        for (int w = 0; w < spec.widths.length; w++) {
            long g = spec.widths[w];
            long base = st.last - Math.floorMod(st.last, g);
            Aggregate[] aggs = spec.slotAgg[w];
            int nb = (int) in.v();
            for (int k = 0; k < nb; k++) {
                Bucket b = new Bucket(base + unzz(in.v()) * g, aggs.length);
                for (int s = 0; s < aggs.length; s++) {
                    b.acc[s] = aggs[s].decode(in, strings);
                }
                st.buckets[w].add(b);
            }
        }
        int nIds = (int) in.v();
        if (nIds > 0) {
            st.ids = new LinkedHashMap<>(nIds * 2);
            for (int i = 0; i < nIds; i++) {
                String id = in.str();
                st.ids.put(id, st.last + unzz(in.v()));
            }
        }
        if (version == 3) {
            if (spec.dWidths.length == 0) {
                return st; // written with delayed shares in the spec, read without: their counts are not needed
            }
            for (int d = 0; d < spec.dWidths.length; d++) {
                long g = spec.dWidths[d];
                long start = st.last - Math.floorMod(st.last, g);
                int n = (int) in.v();
                for (int i = 0; i < n; i++) {
                    start += (i == 0 ? unzz(in.v()) : in.v()) * g;
                    st.delayed[d].put(start, new long[] {in.v()});
                }
            }
        }
        return st;
    }

    static long zz(long v) {
        return StateBytes.zz(v);
    }

    static long unzz(long v) {
        return StateBytes.unzz(v);
    }
}
