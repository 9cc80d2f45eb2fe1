"""PyFlink jobs: wiring only; the logic lives in ``udfs``."""
