package io.riskstream.flink;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/**
 * The traffic split's bucket of an entity key (udfs.split.bucket): the first 8 bytes of
 * sha256(salt + "\u001f" + key) as an unsigned big-endian number, mod the number of buckets; -1 without a
 * key. The number of buckets comes from udfs.split.BUCKETS (constructor arguments), never from here.
 */
public final class ArmBucket {
    private final MessageDigest sha;

    public ArmBucket() {
        try {
            sha = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    public long of(String salt, String key, int buckets) {
        if (key == null) {
            return -1L;
        }
        byte[] h = sha.digest((salt + '\u001f' + key).getBytes(StandardCharsets.UTF_8));
        long v = 0;
        for (int i = 0; i < 8; i++) {
            v = (v << 8) | (h[i] & 0xffL);
        }
        return Long.remainderUnsigned(v, buckets);
    }

    /** For tests (no Flink): the buckets of a JSON array of keys (null for none), as a JSON array. */
    public static String many(String salt, String keysJson, int buckets) throws Exception {
        org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode keys =
                new org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper().readTree(keysJson);
        ArmBucket b = new ArmBucket();
        StringBuilder out = new StringBuilder("[");
        for (int i = 0; i < keys.size(); i++) {
            if (i > 0) {
                out.append(',');
            }
            out.append(b.of(salt, keys.get(i).isNull() ? null : keys.get(i).asText(), buckets));
        }
        return out.append(']').toString();
    }
}
