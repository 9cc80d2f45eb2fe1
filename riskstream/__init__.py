"""riskstream: real-time risk decisions on Apache Flink (PyFlink)."""

__version__ = "0.1.0"
