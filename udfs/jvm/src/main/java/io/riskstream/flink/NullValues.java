package io.riskstream.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Right after a Kafka source ({@link SourceRecords}): a record with a value goes on as its value bytes (an
 * empty value too: the parser dead-letters it); a record whose value is null (a tombstone) becomes a
 * {@code null_value} dead letter ({@link DeadLetters#nullValue}: the key, topic, partition and offset) on
 * the side output "dead-letter". Counter {@code null_values}. The element's timestamp passes through. A value
 * above {@link DeadLetters#ORIGINAL_MAX_BYTES}, whose dead letter will keep only a prefix, is logged with its
 * topic, partition, offset and SHA-256, so the whole record can be found on the topic.
 */
public class NullValues extends ProcessFunction<Row, byte[]> implements ResultTypeQueryable<byte[]> {
    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(NullValues.class);

    public static final OutputTag<byte[]> DEAD_LETTER =
            new OutputTag<>("dead-letter", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);

    private final String jobName;
    private transient Counter nulls;

    public NullValues(String jobName) {
        this.jobName = jobName;
    }

    public static OutputTag<byte[]> deadLetterTag() {
        return DEAD_LETTER;
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
        return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }

    @Override
    public void open(OpenContext openContext) {
        nulls = getRuntimeContext().getMetricGroup().counter("null_values");
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<byte[]> out) {
        byte[] value = (byte[]) row.getField(0);
        if (value != null) {
            if (value.length > DeadLetters.ORIGINAL_MAX_BYTES) {
                // its dead letter will keep a prefix only: say where the whole record is, while retention keeps it
                String msg = "[riskstream] " + row.getField(2) + " partition " + row.getField(3) + " offset "
                    + row.getField(4) + ": a record of " + value.length + " bytes (sha256 "
                    + DeadLetters.sha256Hex(value) + "); a dead letter of it keeps its first "
                    + DeadLetters.ORIGINAL_MAX_BYTES + " bytes";
                LOG.warn(msg);
                System.out.println(msg); // stdout: a local run (PyFlink's gateway) drops the JVM's stderr
            }
            out.collect(value);
            return;
        }
        nulls.inc();
        ctx.output(DEAD_LETTER, DeadLetters.nullValue((byte[]) row.getField(1), (String) row.getField(2),
                (Integer) row.getField(3), (Long) row.getField(4), jobName, System.currentTimeMillis()));
    }
}
