package io.riskstream.flink.aggregates;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;

/** The primitives of a key's state bytes (KeyState): LEB128 varints, little-endian doubles, the string table. */
public final class StateBytes {
    private StateBytes() {}

    /**
     * The distinct strings of a key's sets in first-seen order, with their index: a linear scan while there
     * are few (most keys hold a handful), a hash map beyond.
     */
    public static final class Strings {
        private static final int SCAN = 16;
        public String[] list = new String[8];
        public int n;
        private HashMap<String, Integer> map;

        /** The index of {@code v}, added at the end on first sight. */
        public int index(String v) {
            int i = find(v);
            if (i >= 0) {
                return i;
            }
            if (n == list.length) {
                list = java.util.Arrays.copyOf(list, n * 2);
            }
            list[n] = v;
            if (map != null) {
                map.put(v, n);
            } else if (n + 1 > SCAN) {
                map = new HashMap<>(n * 4);
                for (int k = 0; k <= n; k++) {
                    map.put(list[k], k);
                }
            }
            return n++;
        }

        private int find(String v) {
            if (map != null) {
                Integer i = map.get(v);
                return i == null ? -1 : i;
            }
            for (int i = 0; i < n; i++) {
                if (list[i].equals(v)) {
                    return i;
                }
            }
            return -1;
        }
    }

    /** A growable output buffer with varints. */
    public static final class Out {
        byte[] buf = new byte[512];
        int n;

        void ensure(int k) {
            if (n + k > buf.length) {
                buf = java.util.Arrays.copyOf(buf, Math.max(buf.length * 2, n + k));
            }
        }

        /** One byte. */
        public void b(int x) {
            ensure(1);
            buf[n++] = (byte) x;
        }

        /** An unsigned LEB128 varint. */
        public void v(long x) {
            ensure(10);
            while ((x & ~0x7fL) != 0) {
                buf[n++] = (byte) ((x & 0x7f) | 0x80);
                x >>>= 7;
            }
            buf[n++] = (byte) x;
        }

        /** A double, 8 bytes little-endian. */
        public void d(double x) {
            long bits = Double.doubleToRawLongBits(x);
            ensure(8);
            for (int i = 0; i < 8; i++) {
                buf[n++] = (byte) (bits >>> (8 * i));
            }
        }

        public void bytes(byte[] x) {
            ensure(x.length);
            System.arraycopy(x, 0, buf, n, x.length);
            n += x.length;
        }

        /** A string: its UTF-8 length as a varint, then the bytes. */
        public void str(String s) {
            byte[] u = s.getBytes(StandardCharsets.UTF_8);
            v(u.length);
            bytes(u);
        }

        public byte[] toArray() {
            return java.util.Arrays.copyOf(buf, n);
        }

        /** What it holds, then what {@code other} holds, as a new array. */
        public byte[] concat(Out other) {
            byte[] all = java.util.Arrays.copyOf(buf, n + other.n);
            System.arraycopy(other.buf, 0, all, n, other.n);
            return all;
        }

        /** Forgets what it holds (keeps its buffer, unless it grew past 64 KiB). */
        public void reset() {
            n = 0;
            if (buf.length > 1 << 16) {
                buf = new byte[512];
            }
        }
    }

    /** A cursor over state bytes. */
    public static final class In {
        final byte[] buf;
        int p;

        public In(byte[] buf) {
            this.buf = buf;
        }

        /** Whether every byte has been read. */
        public boolean atEnd() {
            return p >= buf.length;
        }

        public int b() {
            return buf[p++] & 0xff;
        }

        public long v() {
            long x = 0;
            int shift = 0;
            while (true) {
                int c = buf[p++];
                x |= (long) (c & 0x7f) << shift;
                if ((c & 0x80) == 0) {
                    return x;
                }
                shift += 7;
            }
        }

        public double d() {
            long bits = 0;
            for (int i = 0; i < 8; i++) {
                bits |= (long) (buf[p++] & 0xff) << (8 * i);
            }
            return Double.longBitsToDouble(bits);
        }

        public void bytes(byte[] dst) {
            System.arraycopy(buf, p, dst, 0, dst.length);
            p += dst.length;
        }

        public String str() {
            int len = (int) v();
            String s = new String(buf, p, len, StandardCharsets.UTF_8);
            p += len;
            return s;
        }
    }

    public static long zz(long v) {
        return (v << 1) ^ (v >> 63);
    }

    public static long unzz(long v) {
        return (v >>> 1) ^ -(v & 1);
    }
}
