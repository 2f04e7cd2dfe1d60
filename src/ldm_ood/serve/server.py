"""``ldm-ood serve``: load the model once, then answer HTTP on a loopback address until stopped.

:func:`serve` opens the model (a model bundle's folder, or a run directory), fixes the torch thread
count, builds the :class:`~.service.ScoringService` and runs uvicorn on a socket it bound itself (so
``--port 0`` picks a free port, printed on the start line). SIGINT or SIGTERM starts a graceful
shutdown (:class:`ScoringServer`): new scans are refused at once (503), the admitted ones (scoring or
waiting) are finished and answered, for at most ``drain_timeout_s`` seconds; then the private folder
is deleted and the process exits 0.

A host other than a loopback address is allowed, with a warning: the service has no authentication.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console

from ..errors import ConfigError
from .service import ScoringService, ServeSettings

console = Console(stderr=True)


class ScoringServer(uvicorn.Server):
    """uvicorn's server whose shutdown (a signal, or :meth:`handle_exit` called directly) first stops
    the service taking scans; uvicorn then waits for the requests in flight (module docstring)."""

    def __init__(self, config: uvicorn.Config, service: ScoringService):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.close()
        super().handle_exit(sig, frame)


def build_server(service: ScoringService, log_level: str = "info", access_log: bool = True) -> ScoringServer:
    """The uvicorn server of ``service``'s app; run it with ``server.run(sockets=[bind(...)])``."""
    from .app import create_app

    s = service.settings
    config = uvicorn.Config(create_app(service), host=s.host, port=s.port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=s.drain_timeout_s, lifespan="on")
    return ScoringServer(config, service)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise ConfigError(f"cannot resolve host {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    return sock


def open_model(run: str | Path | None, model: str | Path | None, method: str) -> tuple[Path, str | None, dict | None]:
    """``(root with the run-directory layout, model id, model.json)`` of ``--model`` (a bundle, verified;
    it must hold ``method``) or ``--run`` (id and description None: the calibration's are used)."""
    if (run is None) == (model is None):
        raise ConfigError("give exactly one of --model (a model bundle) and --run (a run directory)")
    if run is not None:
        return Path(run), None, None
    from ..bundle import open_bundle

    bundle = open_bundle(model)
    return bundle.root_for(method), bundle.model_id, bundle.meta


def serve(run: str | Path | None = None, model: str | Path | None = None, method: str = "ldm",
          settings: ServeSettings = ServeSettings(), log_level: str = "info", force: bool = False) -> None:
    """Serve ``method`` of the run directory ``run`` or the model bundle ``model`` (module docstring)."""
    import torch

    from ..methods.session import ScoringSession

    root, model_id, bundle_meta = open_model(run, model, method)
    threads = settings.threads or max(1, torch.get_num_threads() // settings.workers)
    torch.set_num_threads(threads)
    session = ScoringSession(root, method, model_id=model_id, bundle_meta=bundle_meta, force=force)
    sock = bind(settings.host, settings.port)
    service = ScoringService(session, settings)
    server = build_server(service, log_level)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if not is_loopback(settings.host):
        console.print(f"[yellow]warning: listening on {settings.host}, reachable from other machines; the service has "
                      "no authentication: put it behind a proxy that has")
    console.print(f"ldm-ood serve: model {session.model_id} ({method}) on {url} — {settings.workers} worker(s), "
                  f"{settings.queue} waiting at most, {threads} torch thread(s); API at {url}/docs. "
                  "Ctrl+C or SIGTERM finishes the admitted scans and stops.", highlight=False, soft_wrap=True)
    main = threading.current_thread() is threading.main_thread()
    # uvicorn restores the handlers it found and re-sends the signal it stopped on: let it land on the server
    # (a no-op by then) instead of killing the process after a clean shutdown
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        service.shutdown()  # idempotent; the app's lifespan did it unless startup failed
