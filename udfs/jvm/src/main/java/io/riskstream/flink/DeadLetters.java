package io.riskstream.flink;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.Base64;

/**
 * The bounds of a dead letter, as {@code udfs.events} states them (udfs.events.dead_letter_record and
 * null_value_record are the definition; tests/test_dead_letter_bounds.py holds the two to each other).
 *
 * <p>An original of at most {@link #ORIGINAL_MAX_BYTES} is kept whole. A longer one (a producer that
 * compresses can land a record far above the broker's 1 MiB cap, which applies to the compressed batch)
 * keeps its first {@link #ORIGINAL_MAX_BYTES} bytes, with {@code original_size} (the whole length),
 * {@code original_sha256} (of the whole original) and {@code original_truncated: true}. A tombstone's key
 * is kept up to {@link #KEY_MAX_BYTES} the same way ({@code key_size}, {@code key_truncated}). So a dead
 * letter is at most about 4/3 MiB + 88 KiB, below the dead-letter sink's 2 MiB {@code max.request.size}.
 */
public final class DeadLetters {
    public static final int ORIGINAL_MAX_BYTES = 1024 * 1024;
    public static final int KEY_MAX_BYTES = 64 * 1024;
    public static final int DETAIL_MAX_CHARS = 200;
    public static final String NULL_VALUE = "null_value";
    public static final String NULL_VALUE_DETAIL = "the record's value is null (a tombstone)";

    private DeadLetters() {
    }

    public static String sha256Hex(byte[] b) {
        try {
            byte[] d = MessageDigest.getInstance("SHA-256").digest(b);
            StringBuilder sb = new StringBuilder(64);
            for (byte x : d) {
                sb.append(Character.forDigit((x >> 4) & 0xF, 16)).append(Character.forDigit(x & 0xF, 16));
            }
            return sb.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** {@code "original_b64":..,"original_size":N} and, above the bound, {@code ,"original_sha256":..,
     * "original_truncated":true} (no leading comma). */
    static void appendOriginal(StringBuilder sb, byte[] raw) {
        boolean cut = raw.length > ORIGINAL_MAX_BYTES;
        byte[] kept = cut ? Arrays.copyOf(raw, ORIGINAL_MAX_BYTES) : raw;
        sb.append("\"original_b64\":\"").append(Base64.getEncoder().encodeToString(kept));
        sb.append("\",\"original_size\":").append(raw.length);
        if (cut) {
            sb.append(",\"original_sha256\":\"").append(sha256Hex(raw)).append("\",\"original_truncated\":true");
        }
    }

    static String truncate(String s, int max) {
        if (s == null) {
            return "";
        }
        if (s.codePointCount(0, s.length()) <= max) {
            return s;
        }
        return s.substring(0, s.offsetByCodePoints(0, max));
    }

    /** A parse-stage dead letter (udfs.events.dead_letter_record): ASCII JSON. */
    public static byte[] record(byte[] raw, String reason, String detail, String job, long deadAtMs) {
        StringBuilder sb = new StringBuilder(Math.min(raw.length, ORIGINAL_MAX_BYTES) * 4 / 3 + 300);
        sb.append("{\"reason\":");
        StrictJson.writeString(sb, reason, true);
        sb.append(",\"detail\":");
        StrictJson.writeString(sb, truncate(detail, DETAIL_MAX_CHARS), true);
        sb.append(',');
        appendOriginal(sb, raw);
        sb.append(",\"job\":");
        StrictJson.writeString(sb, job, true);
        sb.append(",\"dead_at\":").append(deadAtMs).append('}');
        return sb.toString().getBytes(StandardCharsets.US_ASCII);
    }

    /**
     * The dead letter of a record whose value is null (a tombstone; udfs.events.null_value_record): no
     * original ({@code original_null: true}), its key (base64, null without one; bounded like an original),
     * and where it was read ({@code topic}, {@code partition}, {@code offset}; null when unknown).
     */
    public static byte[] nullValue(byte[] key, String topic, Integer partition, Long offset, String job,
                                   long deadAtMs) {
        StringBuilder sb = new StringBuilder(300);
        sb.append("{\"reason\":\"").append(NULL_VALUE).append("\",\"detail\":");
        StrictJson.writeString(sb, NULL_VALUE_DETAIL, true);
        sb.append(",\"original_b64\":\"\",\"original_size\":0,\"original_null\":true,\"key_b64\":");
        if (key == null) {
            sb.append("null");
        } else {
            boolean cut = key.length > KEY_MAX_BYTES;
            sb.append('"').append(Base64.getEncoder().encodeToString(cut ? Arrays.copyOf(key, KEY_MAX_BYTES) : key));
            sb.append("\",\"key_size\":").append(key.length);
            if (cut) {
                sb.append(",\"key_truncated\":true");
            }
        }
        sb.append(",\"topic\":");
        if (topic == null) {
            sb.append("null");
        } else {
            StrictJson.writeString(sb, topic, true);
        }
        sb.append(",\"partition\":").append(partition == null ? "null" : partition.toString());
        sb.append(",\"offset\":").append(offset == null ? "null" : offset.toString());
        sb.append(",\"job\":");
        StrictJson.writeString(sb, job, true);
        sb.append(",\"dead_at\":").append(deadAtMs).append('}');
        return sb.toString().getBytes(StandardCharsets.US_ASCII);
    }
}
