"""Where a job starts from: a savepoint or retained checkpoint named by ``restore_from``, or the newest
retained checkpoint under the job's checkpoint dir (``restore_from=latest``)."""

from __future__ import annotations

from ..config import JobConfig


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest complete retained checkpoint (a ``chk-N`` folder with ``_metadata``) under a file://
    checkpoint dir, across job ids (each run of the job gets a new id), or None."""
    from pathlib import Path
    from urllib.parse import urlparse

    u = urlparse(checkpoint_dir)
    if u.scheme != "file":
        raise ValueError(f"restore_from=latest needs a file:// checkpoint_dir, not {checkpoint_dir!r}; "
                         "pass the checkpoint's path instead")
    best = None
    for meta in Path(u.path).glob("*/chk-*/_metadata"):
        key = (meta.stat().st_mtime, int(meta.parent.name[4:]))
        if best is None or key > best[0]:
            best = (key, meta.parent)
    return best[1].as_uri() if best else None


def resolve_restore_path(cfg: JobConfig) -> str | None:
    """The savepoint or checkpoint the job restores from, as a URI; None for a fresh start. A local path
    without ``_metadata`` raises FileNotFoundError; a remote one (s3://, ...) is left to Flink to check."""
    if not cfg.restore_from:
        return None
    if cfg.restore_from == "latest":
        return latest_checkpoint(cfg.checkpoint_dir)
    from pathlib import Path
    from urllib.parse import urlparse

    u = urlparse(cfg.restore_from)
    if u.scheme not in ("", "file"):  # s3://, hdfs://, ...: Flink checks it
        return cfg.restore_from
    p = Path(u.path if u.scheme == "file" else cfg.restore_from).expanduser().resolve()
    if not (p / "_metadata").is_file():
        raise FileNotFoundError(f"restore_from {cfg.restore_from!r} is not a savepoint or checkpoint folder "
                                "(no _metadata in it)")
    return p.as_uri()
