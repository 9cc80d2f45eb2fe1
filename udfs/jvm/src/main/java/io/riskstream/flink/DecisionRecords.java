package io.riskstream.flink;

import java.io.IOException;
import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;

/**
 * Decision record bytes to a Kafka record keyed by the decision's {@code user_id}, so one user's decisions
 * share a partition. The value is written as is. Only the top-level fields before {@code user_id} are
 * read (it is the fourth field of udfs.decision records). A record without a string user_id gets no key.
 *
 * <p>A record above the sink's {@code max.request.size} (Kafka's default 1 MiB unless given) is counted,
 * logged and skipped by a {@link SinkGuard} instead of failing the sink; a decision record is a few KiB at
 * most (its fields from the event are bounded by the event contract), so it does not happen.
 *
 * <p>Pitfall: the sink's own timestamp is not set here; the output topics use LogAppendTime (see
 * riskstream.topics), so retention follows the broker's clock, not the event's.
 */
public final class DecisionRecords implements KafkaRecordSerializationSchema<byte[]> {
    private static final long serialVersionUID = 1L;
    private static final JsonFactory JSON = new JsonFactory();
    /** The producer's default max.request.size. */
    public static final int DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024;
    private final String topic;
    private final SinkGuard guard;

    public DecisionRecords(String topic) {
        this(topic, DEFAULT_MAX_REQUEST_BYTES);
    }

    public DecisionRecords(String topic, int maxRequestBytes) {
        this.topic = topic;
        this.guard = new SinkGuard("decisions", maxRequestBytes);
    }

    @Override
    public void open(SerializationSchema.InitializationContext context, KafkaSinkContext sinkContext) {
        guard.open(context.getMetricGroup());
    }

    public static byte[] userKey(byte[] record) {
        try (JsonParser p = JSON.createParser(record)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken value = p.nextToken();
                if ("user_id".equals(name)) {
                    return value == JsonToken.VALUE_STRING ? p.getText().getBytes(StandardCharsets.UTF_8) : null;
                }
                p.skipChildren();
            }
            return null;
        } catch (IOException e) {
            return null;
        }
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(byte[] element, KafkaSinkContext context, Long timestamp) {
        byte[] key = userKey(element);
        return guard.admit(key, element) ? new ProducerRecord<>(topic, null, null, key, element) : null;
    }
}
