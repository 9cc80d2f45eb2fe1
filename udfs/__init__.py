"""riskstream's low-latency functions: parsing, sliding-window features, ONNX scoring, decision policy.

Everything except ``udfs.flink`` is plain Python with explicit timestamps and dict-like state, testable
without a JVM; ``udfs.flink`` only adapts Flink state and outputs to it.
"""
