package io.riskstream.flink;

/**
 * HyperLogLog exactly as udfs/hll.py: P = 11 (2048 one-byte registers), 64-bit BLAKE2b of the UTF-8 value
 * read big-endian, register = top P bits, rank = leading zeros of the other 64 - P bits + 1; the estimate
 * with linear counting below 2.5 M, summing 2^-r in numpy's order (first element, then pairwise).
 */
public final class Hll {
    public static final int P = 11;
    public static final int M = 1 << P;
    private static final double ALPHA = 0.7213 / (1 + 1.079 / M);

    private Hll() {}

    public static void add(byte[] reg, String value) {
        addHash(reg, Blake2b64.hash(value));
    }

    public static void addHash(byte[] reg, long h) {
        int idx = (int) (h >>> (64 - P));
        long rest = h & ((1L << (64 - P)) - 1);
        int rank = Long.numberOfLeadingZeros(rest) - P + 1; // (64-P) - bit_length(rest) + 1
        if (rank > reg[idx]) {
            reg[idx] = (byte) rank;
        }
    }

    public static void mergeInto(byte[] dst, byte[] src) {
        for (int i = 0; i < M; i++) {
            if (src[i] > dst[i]) {
                dst[i] = src[i];
            }
        }
    }

    public static double estimate(byte[] reg) {
        double[] t = new double[reg.length];
        int zeros = 0;
        for (int i = 0; i < reg.length; i++) {
            t[i] = Math.scalb(1.0, -reg[i]);
            if (reg[i] == 0) {
                zeros++;
            }
        }
        // numpy's add.reduce: the first element, then the pairwise sum of the rest
        double z = t[0] + pairwise(t, 1, t.length - 1);
        double e = ALPHA * M * M / z;
        if (e <= 2.5 * M && zeros != 0) {
            return M * Math.log((double) M / zeros);
        }
        return e;
    }

    /** numpy's pairwise_sum (PW_BLOCKSIZE 128, 8 accumulators unrolled). */
    static double pairwise(double[] a, int off, int n) {
        if (n < 8) {
            double res = -0.0;
            for (int i = 0; i < n; i++) {
                res += a[off + i];
            }
            return res;
        }
        if (n <= 128) {
            double[] r = new double[8];
            for (int j = 0; j < 8; j++) {
                r[j] = a[off + j];
            }
            int i;
            for (i = 8; i < n - (n % 8); i += 8) {
                for (int j = 0; j < 8; j++) {
                    r[j] += a[off + i + j];
                }
            }
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) {
                res += a[off + i];
            }
            return res;
        }
        int n2 = n / 2;
        n2 -= n2 % 8;
        return pairwise(a, off, n2) + pairwise(a, off + n2, n - n2);
    }

    /** Python's {@code float(round(x))}: round half to even. */
    public static double roundHalfEven(double x) {
        return Math.rint(x);
    }
}
