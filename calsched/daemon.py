"""``calsched run`` and ``calsched backend serve``: wiring the adapters into a process.

:func:`run_daemon` builds, from one :class:`~calsched.config.Config`:

- the journal (migrated on start; a schema newer than the code is refused),
- the backend: :class:`~calsched.backend.http.HttpBackend` to ``backend_url``, or, with
  no ``backend_url``, the embedded calendar behind the reference backend's ASGI app,
  reached through :class:`httpx.ASGITransport` with a random per-process key, so the
  daemon speaks the real protocol (auth, JSON, status codes) without opening a port,
- the host (:class:`~calsched.host.WebhookHost`, :class:`~calsched.host.CommandHost`,
  :class:`~calsched.host.ConsoleHost`, the default, which prints each wake and the command
  that completes it, or :class:`NoHost`, which fails every wake with a cause saying no
  host is configured),
- the :class:`~calsched.scheduler.Scheduler` and the control API on the configured
  loopback address.

With the embedded calendar, a watcher asks the calendar every :data:`DUE_POLL_S` whether a
slot is due (one indexed query, ``LIMIT 1``, whatever the number of slots) and nudges the
heartbeat when one is, so a slot added for now fires within about a second rather than at
the next ``heartbeat_interval_s``.

Before any of the scheduler runs, the daemon takes its identifier's lease
(:mod:`calsched.journal.lease`): a live holder elsewhere makes ``run`` exit 1 with one line
naming it, and ``run --standby`` waits instead, taking over when the holder dies or goes
silent past its lease time. The :class:`~calsched.scheduler.keeper.LeaseKeeper` renews it;
once it is lost (a write refused under a newer epoch, a renewal overdue) the daemon steps
down: the scheduler stops without sending the outbox, and the process exits 1 (or with
``--standby`` waits again).

The control socket is bound once the lease is held, before the scheduler starts, and
handed to uvicorn, so "port in use" is a one-line error at start and no other process can
take the port in between. SIGTERM and SIGINT stop the process gracefully: the control API
stops accepting, the scheduler stops (bounded wait for wakes, outbox flush), the lease is
released (so a restart takes over at once), then the journal is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from calsched.config import Config, ControlConfig, HostAdapter
from calsched.errors import (
    ConfigError,
    JournalError,
    LeaseHeldError,
    LeaseLostError,
    WakeFailedError,
)
from calsched.logs import get_logger, hidden_modules
from calsched.model import AgentReport
from calsched.notify import Notifier
from calsched.ports import Host, WakeRequest

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from calsched.backend.http import HttpBackend
    from calsched.control import ControlServer
    from calsched.journal import Journal
    from calsched.journal.lease import Lease
    from calsched.scheduler import Scheduler

__all__ = [
    "DUE_POLL_S",
    "EXIT_LEASE_LOST",
    "EXIT_RESTART",
    "NoHost",
    "bind_socket",
    "build_host",
    "embedded_backend",
    "remote_backend",
    "run_daemon",
    "serve_backend",
]

#: Exit status of ``run --exit-on-restart`` when the backend asks for a restart
#: (``EX_TEMPFAIL`` in sysexits.h: "try again", which supervisors restart on).
EXIT_RESTART = 75

#: Exit status of ``run`` (without ``--standby``) that stepped down after losing its lease.
EXIT_LEASE_LOST = 1

#: What :func:`_serve` returns after stepping down, told apart from an ordinary status 1.
_LOST = -1

#: How often the daemon asks the embedded calendar whether a slot is due (seconds).
DUE_POLL_S = 1.0

log = get_logger("calsched.daemon")


class NoHost:
    """The host used when ``host.adapter`` is ``none``: every wake fails, with the cause.

    A wake that nobody receives must not leave its slot ``in_progress`` forever (the agent
    would never complete it): failing it aborts the slot with ``wake-agent failed: no
    host adapter is configured ...``, which the journal records and the backend hears.
    """

    CAUSE = "no host adapter is configured (set host.adapter to webhook or command)"
    #: Where wakes go, for log lines.
    target = "none"

    async def wake_agent(self, request: WakeRequest) -> None:
        """Refuse the wake: there is no one to give it to."""
        raise WakeFailedError(request.agent_id, self.CAUSE)

    async def list_agents(self) -> list[AgentReport]:
        """No host, no agents."""
        return []


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; :class:`ConfigError` if it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve the address {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR lets a restart bind while old connections sit in TIME_WAIT; it does
        # not let two listeners share the port on POSIX, so "in use" is still detected.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{host}:{port} is already in use; stop the other process or pick another port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def build_host(cfg: Config, *, cli: Sequence[str] = ("calsched",)) -> Host:
    """The host adapter the configuration names (``cli``: how the console host's printed
    commands reach this daemon)."""
    host = cfg.host
    # No deadline for the adapters: the scheduler bounds each wake by wake_timeout_s.
    if host.adapter is HostAdapter.webhook:
        from calsched.host import WebhookHost

        assert host.wake_url is not None  # the config's own rule
        token = host.token_value()
        return WebhookHost(
            str(host.wake_url),
            agents_url=str(host.agents_url) if host.agents_url is not None else None,
            token=token.get_secret_value() if token is not None else None,
        )
    if host.adapter is HostAdapter.command:
        from calsched.host import CommandHost

        assert host.command  # the config's own rule
        return CommandHost(host.command, list_argv=host.agents_command)
    if host.adapter is HostAdapter.console:
        from calsched.host import ConsoleHost

        return ConsoleHost(cli=cli)
    return NoHost()


def remote_backend(cfg: Config) -> HttpBackend | None:
    """The HTTP client for ``backend_url``, or ``None`` when the calendar is embedded.

    Raises :class:`ConfigError` when ``backend_url`` is set without an API key.
    """
    from calsched.backend.http import HttpBackend

    if cfg.backend_url is None:
        return None
    key = cfg.backend_key()
    if key is None:
        raise ConfigError(
            "backend_url is set but there is no API key: set CALSCHED_BACKEND_API_KEY "
            "or backend_api_key_file"
        )
    return HttpBackend(
        str(cfg.backend_url),
        key.get_secret_value(),
        max_response_bytes=cfg.backend_max_response_bytes,
    )


def embedded_backend(cfg: Config, engine: Engine) -> HttpBackend:
    """The embedded calendar in ``engine``'s database, behind the reference backend's app
    (:func:`calsched.backend.embedded.embedded_backend`: no port is opened)."""
    from calsched.backend import embedded
    from calsched.backend.calendar import LocalCalendar

    return embedded.embedded_backend(
        LocalCalendar(engine), max_response_bytes=cfg.backend_max_response_bytes
    )


def _allowed_hosts(control: ControlConfig) -> tuple[str, ...]:
    from calsched.control import DEFAULT_ALLOWED_HOSTS

    name = control.host.lower()
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    return tuple(dict.fromkeys((*DEFAULT_ALLOWED_HOSTS, name)))


def run_daemon(
    cfg: Config,
    *,
    exit_on_restart: bool = False,
    standby: bool = False,
    cli: Sequence[str] = ("calsched",),
) -> int:
    """Run until SIGTERM/SIGINT (status 0), a restart request with ``exit_on_restart``
    (status :data:`EXIT_RESTART`) or a lost lease (status :data:`EXIT_LEASE_LOST`; with
    ``standby``, back to waiting). Start-up problems raise a
    :class:`~calsched.errors.CalschedError` before anything runs; a live holder of the
    identifier is a :class:`~calsched.errors.LeaseHeldError` unless ``standby``. ``cli``
    is the command line the console host's printed commands start with.
    """
    with hidden_modules("rich", "pygments"):
        # httpx loads its command-line client (rich, pygments) when they are installed;
        # the daemon only needs the library. The first import decides, so it is made here.
        import httpx  # noqa: F401

    # Taken once and removed from the environment: a command host's children must not
    # notify systemd in calsched's name (docs/operations.md, "Running as a service").
    notifier = Notifier.from_env(unset=True)
    while True:
        try:
            code = asyncio.run(
                _serve(cfg, notifier, exit_on_restart=exit_on_restart, standby=standby, cli=cli)
            )
        except LeaseLostError:  # lost while starting (a recovery write refused)
            code = _LOST
        if code != _LOST:
            return code
        if not standby:
            return EXIT_LEASE_LOST
        log.info("back to standby", identifier=cfg.identifier)
        notifier.status(f"standing by for identifier {cfg.identifier}")


async def _serve(
    cfg: Config, notifier: Notifier, *, exit_on_restart: bool, standby: bool, cli: Sequence[str]
) -> int:
    from calsched.control import create_control_app, serve_control
    from calsched.failpoints import Failpoint, failpoint_from_env
    from calsched.journal import Journal
    from calsched.metrics import Metrics
    from calsched.scheduler import Scheduler
    from calsched.scheduler.keeper import LeaseKeeper
    from calsched.tokens import load_or_create_secret
    from calsched.tracing import open_tracing

    async with AsyncExitStack() as stack:
        # Everything that can refuse the configuration comes before the database is touched.
        failpoint = failpoint_from_env()  # a test seam; a no-op unless CALSCHED_FAILPOINT
        if isinstance(failpoint, Failpoint):
            log.warning("failpoints armed: this process will SIGKILL itself", **failpoint.armed)
        host = build_host(cfg, cli=cli)
        closer = getattr(host, "aclose", None)
        if closer is not None:
            stack.push_async_callback(closer)
        backend = remote_backend(cfg)
        if backend is not None:
            stack.push_async_callback(backend.aclose)
        secret = load_or_create_secret(cfg.control.secret_file.expanduser())
        tracing = open_tracing(cfg.tracing, cfg.tracing_exporter, identifier=cfg.identifier)
        stack.callback(tracing.close)  # after the scheduler stopped: its last spans go out
        journal = await asyncio.to_thread(
            Journal.open,
            cfg.database_url,
            cfg.identifier,
            synchronous=cfg.sqlite_synchronous,
            upgrade=True,
        )
        stack.callback(journal.close)  # last out: after the backend and the scheduler
        if cfg.defaulted("identifier"):
            # A defaulted identifier (the host name) that this database has never seen,
            # beside live slots of others, is a renamed host: refuse rather than recover
            # nothing. An identifier given on purpose is taken as meant.
            from calsched.journal.identifiers import check_new_identifier

            await asyncio.to_thread(
                check_new_identifier, journal.engine, cfg.identifier, why="the host name"
            )
        lease = await _take_lease(cfg, journal, standby=standby)
        if lease is None:  # a signal while standing by
            return 0
        stack.callback(lease.release)  # before the journal closes: a restart need not wait
        fence = lease.fence
        assert fence is not None
        journal.fence(fence)
        sock = bind_socket(cfg.control.host, cfg.control.port)
        stack.callback(sock.close)
        _acquired(lease)  # logged once the port is ours: a refusal stays one line
        if backend is None:
            backend = embedded_backend(cfg, journal.engine)
            stack.push_async_callback(backend.aclose)
        metrics = Metrics()
        keeper = LeaseKeeper(lease, every_s=cfg.lease_renew_every_s, metrics=metrics)
        loop = asyncio.get_running_loop()
        lost = asyncio.Event()
        # From the writer thread (a refused write) or the loop (a failed renewal).
        fence.on_lost(lambda _why: _post(loop, lost.set))
        keeping = asyncio.create_task(keeper.run(), name="calsched-lease")
        scheduler = Scheduler(
            cfg.scheduler_settings(),
            journal,
            backend,
            host,
            metrics=metrics,
            lease_status=keeper.status,
            failpoint=failpoint,
            tracing=tracing,
        )
        _report_known_agents(host, scheduler)
        if cfg.backend_url is None:
            watching = asyncio.create_task(
                _nudge_when_due(scheduler, journal.engine), name="calsched-due"
            )
            stack.push_async_callback(_cancelled, watching)
        app = create_control_app(
            scheduler,
            secret=secret,
            metrics=metrics,
            allowed_hosts=_allowed_hosts(cfg.control),
            tracing=tracing,
            outbox=scheduler.dead_letters,
            readiness=scheduler.readiness,
        )
        server = serve_control(app, cfg.control.host, cfg.control.port)
        try:
            return await _supervise(
                cfg,
                scheduler,
                server,
                sock,
                lost,
                notifier,
                backend="embedded" if cfg.backend_url is None else backend.base_url,
                exit_on_restart=exit_on_restart,
            )
        finally:
            # Also after a failed start: stop() is bounded and leaves nothing running.
            # After a lost lease nothing more goes to the backend: the new holder sends it.
            await scheduler.stop(flush=fence.lost is None)
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)
            if fence.lost is not None:
                log.error(
                    "stepped down: the lease is lost",
                    identifier=cfg.identifier,
                    epoch=fence.epoch,
                    why=fence.lost,
                    refused_writes=fence.refused,
                )
            log.info("daemon stopped")


def _report_known_agents(host: Host, scheduler: Scheduler) -> None:
    """The console host has no agents of its own: it reports those of the live slots."""
    from calsched.host import ConsoleHost

    if isinstance(host, ConsoleHost):
        host.agents = lambda: (view.agent_id for view in scheduler.active())


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _nudge_when_due(scheduler: Scheduler, engine: Engine) -> None:
    """Every :data:`DUE_POLL_S`, nudge the heartbeat if the embedded calendar has a slot due.

    A failed check is a failed try: one log line, then a doubling wait (capped at the
    heartbeat interval, which fires the slot anyway).
    """
    from calsched.backend.calendar import LocalCalendar
    from calsched.scheduler.backoff import equal_jitter, exponential

    calendar = LocalCalendar(engine)
    failures = 0
    wait = DUE_POLL_S
    while True:
        await asyncio.sleep(wait)
        try:
            due = await asyncio.to_thread(calendar.has_due)
        except Exception as exc:  # the database is away: the heartbeat says so too
            failures += 1
            cap = max(DUE_POLL_S, scheduler.settings.heartbeat_interval_s)
            wait = equal_jitter(exponential(failures - 1, DUE_POLL_S, cap))
            log.warning(
                "checking the calendar for due slots failed",
                error=f"{type(exc).__name__}: {exc}",
                tries=failures,
                next_try_s=round(wait, 1),
            )
            continue
        failures, wait = 0, DUE_POLL_S
        if due:
            scheduler.nudge()


async def _take_lease(cfg: Config, journal: Journal, *, standby: bool) -> Lease | None:
    """Acquire the identifier's lease; with ``standby``, wait for it (``None`` if a
    signal came first). Without, a live holder is a :class:`LeaseHeldError`."""
    from calsched.journal.lease import Lease, bound_idle_transactions

    bound_idle_transactions(journal.engine, cfg.lease_ttl_s)
    lease = Lease.guarded(journal.engine, cfg.identifier, ttl_s=cfg.lease_ttl_s)
    try:
        await asyncio.to_thread(lease.acquire)
    except LeaseHeldError as exc:
        if not standby:
            raise exc.with_hint("use --standby to wait") from None
        log.info("standing by", holder=str(exc))
        return await _stand_by(lease, poll_s=min(2.0, max(0.2, cfg.lease_ttl_s / 10)))
    return lease


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(callback)


def _acquired(lease: Lease) -> None:
    log.info(
        "lease acquired",
        identifier=lease.identifier,
        epoch=lease.epoch,
        takeover=lease.takeover,
        locked=lease.locked,
    )


async def _stand_by(lease: Lease, *, poll_s: float) -> Lease | None:
    """Try for the lease every ``poll_s`` until it is taken or SIGTERM/SIGINT comes.

    Polling, not a blocking lock: a silent holder keeps its death lock, and only the
    expiry frees the lease from it. A dead one is noticed within one poll.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
            if stop.is_set():
                log.info("stopping while standing by")
                return None
            try:
                await asyncio.to_thread(lease.acquire)
            except LeaseHeldError:
                continue
            except JournalError as exc:  # the database is away: keep waiting for it
                log.warning("standing by: the lease cannot be read", error=str(exc))
                continue
            return lease
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _supervise(
    cfg: Config,
    scheduler: Scheduler,
    server: ControlServer,
    sock: socket.socket,
    lost: asyncio.Event,
    notifier: Notifier,
    *,
    backend: str,
    exit_on_restart: bool,
) -> int:
    """Start the scheduler and the control API; wait for a signal, a restart, a lost
    lease or a crash.

    Returns the exit status (:data:`_LOST` after a lost lease); the caller stops the
    scheduler, releases the lease and closes the journal.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    caught: list[str] = []

    def _on_signal(sig: signal.Signals) -> None:
        caught.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig)
    waiters: dict[asyncio.Task[Any], str] = {}
    code = 1
    try:
        await scheduler.start()
        server_task = asyncio.create_task(server.serve(sockets=[sock]), name="calsched-control")
        waiters[server_task] = "control"
        # READY=1 once the lease is held (taken before) and the control API answers.
        if await _serving(server, server_task):
            notifier.ready(f"serving {cfg.control.url} for identifier {cfg.identifier}")
        waiters[asyncio.create_task(stop.wait())] = "signal"
        waiters[asyncio.create_task(lost.wait())] = "lease"
        if exit_on_restart:
            waiters[asyncio.create_task(scheduler.restart_requested.wait())] = "restart"
        log.info(
            "daemon started",
            identifier=cfg.identifier,
            database=cfg.database_display(),
            backend=backend,
            host=cfg.host.adapter.value,
            control=cfg.control.url,
        )
        if cfg.host.adapter is HostAdapter.none:
            log.warning("no host adapter configured: every wake will fail", cause=NoHost.CAUSE)
        elif cfg.host.adapter is HostAdapter.console:
            log.info(
                "no agent host configured: each wake is printed here, with the command "
                "that completes it (set host.adapter to webhook or command for real agents)"
            )
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        reason = next(waiters[t] for t in waiters if t in done)
        code = 0
        if reason == "restart":
            log.info("the backend asked for a restart: exiting", status=EXIT_RESTART)
            code = EXIT_RESTART
        elif reason == "signal":
            log.info("stopping", signal=caught[0] if caught else None)
        elif reason == "lease":
            log.error("the lease is lost: stepping down")
            code = _LOST
        else:
            crash = None if server_task.cancelled() else server_task.exception()
            log.error("the control API stopped unexpectedly; stopping", exc_info=crash)
            code = 1
        return code
    finally:
        if code != _LOST:  # a step-down may stand by again: systemd must not stop us
            notifier.stopping()
        server.should_exit = True
        for task, name in waiters.items():
            if name != "control":
                task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serving(server: ControlServer, task: asyncio.Task[Any]) -> bool:
    """Wait until uvicorn serves on its socket; ``False`` if it ended first."""
    while not server.started:
        if task.done():
            return False
        await asyncio.sleep(0.01)
    return True


def serve_backend(cfg: Config, api_key: str, *, host: str, port: int) -> None:
    """Serve the embedded calendar as the reference backend over HTTP until SIGINT/SIGTERM."""
    import uvicorn

    from calsched.backend.calendar import LocalCalendar
    from calsched.backend.server import create_backend_app
    from calsched.journal import Journal

    sock = bind_socket(host, port)
    try:
        journal = Journal.open(
            cfg.database_url, cfg.identifier, synchronous=cfg.sqlite_synchronous, upgrade=True
        )
        try:
            app = create_backend_app(LocalCalendar(journal.engine), api_key)
            config = uvicorn.Config(
                app, log_config=None, access_log=False, lifespan="off", server_header=False
            )
            log.info("reference backend serving", address=f"{host}:{port}")
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            journal.close()
    finally:
        sock.close()
