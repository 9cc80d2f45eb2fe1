"""Operations: what runs the job and its surroundings on a machine.

``broker`` (the local Kafka broker), ``cluster`` (a local standalone Flink cluster), ``submit`` (the job onto
a cluster: submit, savepoint, stop, cancel), ``flink_rest`` (every call to Flink's REST API), ``jars``
(connector jars through Maven), ``restore`` (which checkpoint or savepoint a job starts from), ``preflight``
(start-up checks) and ``procs`` (processes and ports). Below the job (``pipelines``), the tools and the CLI;
imports none of them.
"""
