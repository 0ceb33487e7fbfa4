"""`csd-texture serve`: a local web app (page + HTTP API) that textures uploaded meshes.

The model is loaded once per worker (one per GPU; one on a CPU); jobs queue and are kept on
disk (one folder and JSON record each) so they outlive a page reload and a restart.
"""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from ..config import Config
from ..errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_DATA_DIR = Path("~/.cache/csd-texture/serve")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_server(base: Config, host: str = "127.0.0.1", port: int = 8765, workers: int = 1,
               max_upload_mb: int = 200, data_dir: Path | None = None) -> None:
    """Load the model, then serve until interrupted."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ConfigError(f"csd-texture serve needs its extra: pip install 'csd-texture[serve]' ({exc})") from exc
    from .jobs import JobStore
    from .worker import Workers, worker_devices

    store = JobStore((data_dir or DEFAULT_DATA_DIR).expanduser())
    pool = Workers(store, base, worker_devices(base, workers))
    if not is_loopback(host):
        log.warning("serving on %s: anyone who can reach port %d can use this GPU and read the jobs "
                    "(no authentication)", host, port)
    log.info("csd-texture serve: http://%s:%d/ (jobs in %s, %d worker(s) on %s)", host, port, store.root,
             len(pool.devices), ", ".join(pool.devices))
    try:
        uvicorn.run(create_app(store, pool, max_upload_mb * 2**20), host=host, port=port, log_level="warning")
    finally:
        pool.stop()


__all__ = ["run_server"]
