package io.riskstream.flink;

import java.io.IOException;
import java.nio.charset.StandardCharsets;

import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The last line before a sink's producer: a record the producer would refuse for its size
 * ({@code RecordTooLargeException}: the write fails, the job restarts into the same record, forever) is
 * counted ({@code records_unwritable}), logged with what identifies it (its reason or event id, and its
 * source partition and offset when it names them) and skipped. The dead letters and the decision records
 * are bounded before they get here (docs/contracts.md), so this never fires unless a bound is broken; it
 * turns a bug into a counted loss instead of a job that cannot run.
 */
final class SinkGuard implements java.io.Serializable {
    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(SinkGuard.class);
    private static final JsonFactory JSON = new JsonFactory();
    /** Kafka's per-record and per-batch overhead above key + value, generously (the producer's estimate of
     * a one-record batch: 61 bytes of batch header, at most 21 of record header, plus headers). */
    static final int RECORD_OVERHEAD = 1024;

    private final String sink;
    private final int maxRequestBytes;
    private transient Counter unwritable;

    SinkGuard(String sink, int maxRequestBytes) {
        this.sink = sink;
        this.maxRequestBytes = maxRequestBytes;
    }

    void open(MetricGroup group) {
        unwritable = group.counter("records_unwritable");
    }

    /** True when the record may be sent; false when it was counted, logged and must be skipped. */
    boolean admit(byte[] key, byte[] value) {
        long size = (long) (value == null ? 0 : value.length) + (key == null ? 0 : key.length) + RECORD_OVERHEAD;
        if (size <= maxRequestBytes) {
            return true;
        }
        if (unwritable != null) {
            unwritable.inc();
        }
        String msg = "[riskstream] " + sink + " sink: skipped a record of " + (value == null ? 0 : value.length)
            + " bytes, above max.request.size " + maxRequestBytes + " (" + describe(value) + ")";
        LOG.error(msg);
        System.out.println(msg); // stdout: a local run (PyFlink's gateway) drops the JVM's stderr
        return false;
    }

    /** reason / event_id / user_id / topic / partition / offset, when the record's top level names them. */
    static String describe(byte[] value) {
        if (value == null) {
            return "null";
        }
        StringBuilder sb = new StringBuilder();
        try (JsonParser p = JSON.createParser(value)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return "not a JSON object";
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken t = p.nextToken();
                switch (name) {
                    case "reason": case "event_id": case "user_id": case "topic": case "partition": case "offset":
                    case "original_size": case "original_sha256":
                        if (t.isScalarValue()) {
                            String v = p.getText();
                            sb.append(sb.length() > 0 ? ", " : "").append(name).append('=')
                                .append(v.length() > 200 ? v.substring(0, 200) : v);
                        }
                        break;
                    default:
                        p.skipChildren();
                }
            }
        } catch (IOException | RuntimeException e) {
            sb.append(sb.length() > 0 ? ", " : "").append("unreadable: ").append(e.getClass().getSimpleName());
        }
        return sb.length() == 0 ? new String(value, 0, Math.min(200, value.length), StandardCharsets.UTF_8) : sb.toString();
    }
}
