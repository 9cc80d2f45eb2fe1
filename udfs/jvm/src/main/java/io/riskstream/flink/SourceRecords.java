package io.riskstream.flink;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The job's Kafka sources' deserializer: the whole record as a Row (value, key, topic, partition, offset),
 * null value included. A value-only deserializer returns null for a tombstone (a record whose value is null)
 * and Flink drops it without a trace; this one hands it on, so {@link NullValues} dead-letters it as
 * {@code null_value} with its key. The record's timestamp stays the element's (the source sets it).
 */
public final class SourceRecords implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;

    public static final String[] FIELDS = {"value", "key", "topic", "partition", "offset"};

    public static RowTypeInfo rowType() {
        return new RowTypeInfo(new TypeInformation<?>[] {
            PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
            Types.STRING, Types.INT, Types.LONG}, FIELDS);
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        out.collect(Row.of(record.value(), record.key(), record.topic(), record.partition(), record.offset()));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return rowType();
    }
}
