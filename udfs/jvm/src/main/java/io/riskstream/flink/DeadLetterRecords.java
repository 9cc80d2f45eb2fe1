package io.riskstream.flink;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Dead-letter bytes to an unkeyed Kafka record on {@code topic}, behind a {@link SinkGuard} at the sink's
 * {@code max.request.size}: a record the producer would refuse is counted, logged and skipped, never
 * retried forever (dead letters are bounded well below it: {@link DeadLetters}).
 */
public final class DeadLetterRecords implements KafkaRecordSerializationSchema<byte[]> {
    private static final long serialVersionUID = 1L;
    private final String topic;
    private final SinkGuard guard;

    public DeadLetterRecords(String topic, int maxRequestBytes) {
        this.topic = topic;
        this.guard = new SinkGuard("dead-letter", maxRequestBytes);
    }

    @Override
    public void open(SerializationSchema.InitializationContext context, KafkaSinkContext sinkContext) {
        guard.open(context.getMetricGroup());
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(byte[] element, KafkaSinkContext context, Long timestamp) {
        return guard.admit(null, element) ? new ProducerRecord<>(topic, null, null, null, element) : null;
    }
}
