"""``teleport start`` runtime: real child processes and in-process clusters with the sample plugin."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from teleport_core import __version__, hookimpl
from teleport_core.config.load import parse_config
from teleport_core.datadir import lock_data_dir
from teleport_core.errors import PluginError
from teleport_core.plugins import make_plugins
from teleport_core.process import StartError, TeleportProcess, start_order
from teleport_core.testing.cluster import ClusterStartError, start_cluster
from tests.plugins.sample_service import SampleService, events
from tests.process_helpers import (
    SECRET,
    TeleportChild,
    connect_refused,
    echo,
    sample_config,
    sample_plugins,
    spawner,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def spawn() -> Iterator[Callable[..., TeleportChild]]:
    yield from spawner()


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


# -- child processes -------------------------------------------------------------------------------


def test_services_start_in_dependency_order_and_sigterm_stops_them_in_reverse(
    tmp_path: Path, spawn: Callable[..., TeleportChild]
) -> None:
    data_dir = tmp_path / "data"
    # sample_after comes first in the file; ServiceSpec.after must still start it second.
    config = sample_config(data_dir, after={})
    config = {"sample_after": config.pop("sample_after"), **config}
    child = spawn(tmp_path, config)
    child.wait_ready()

    log = child.log()
    assert re.search(rf"INFO \[process\] starting teleport version={re.escape(__version__)} pid={child.pid}", log)
    assert re.search(r"loaded plugin plugin=tests\.plugins\.sample_service distribution=\S+ version=-", log)
    assert re.search(r"loaded plugin plugin=sqlite distribution=teleport-core version=\S+", log)
    assert events(data_dir)[:5] == [
        "start sample_service",
        f"listening sample_service {child.addr_of('sample_service')}",
        "start sample_after",  # and sample_after's start checked that sample_service echoes
        f"listening sample_after {child.addr_of('sample_after')}",
        "hook started sample_service,sample_after",
    ]
    addrs = [child.addr_of("sample_service"), child.addr_of("sample_after")]
    for addr in addrs:
        assert echo(addr, b"ping\n") == b"ping\n"
    assert (data_dir / "teleport.lock").read_text().strip() == str(child.pid)

    child.signal(signal.SIGTERM)
    assert child.wait_exit() == 0
    assert events(data_dir)[5:] == [
        "hook stopping",
        "stop sample_after",
        "stopped sample_after",
        "stop sample_service",
        "stopped sample_service",
    ]
    for addr in addrs:
        assert connect_refused(addr)
    assert "teleport stopped" in child.log()
    assert error_lines(child.log()) == []
    with lock_data_dir(data_dir):  # the lock was released
        pass


def test_sigint_shuts_down_cleanly(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    child = spawn(tmp_path, sample_config(tmp_path / "data"))
    child.wait_ready()
    addr = child.addr_of("sample_service")
    diag = child.diag_url
    child.signal(signal.SIGINT)
    assert child.wait_exit() == 0
    assert re.search(r"shutting down signal=SIGINT", child.log())
    assert connect_refused(addr)
    assert connect_refused(diag.removeprefix("http://"))
    assert events(tmp_path / "data")[-2:] == ["stop sample_service", "stopped sample_service"]


def test_a_second_sigint_forces_exit_during_a_slow_shutdown(
    tmp_path: Path, spawn: Callable[..., TeleportChild]
) -> None:
    child = spawn(tmp_path, sample_config(tmp_path / "data", sample={"stop_delay": "1h"}))
    child.wait_ready()
    child.signal(signal.SIGINT)
    child.wait_log(r"teleport is stopping \(received SIGINT\)")
    wait_for(lambda: "stop sample_service" in events(tmp_path / "data"), what="stop() to begin")
    child.signal(signal.SIGTERM)  # a SIGTERM while stopping is only logged
    child.wait_log(r"already shutting down signal=SIGTERM")
    assert child.proc.poll() is None
    child.signal(signal.SIGINT)
    assert child.wait_exit() == 130  # a finished (clean) shutdown would exit 0
    assert "second interrupt: exiting without a clean shutdown" in child.log()
    assert "stopped sample_service" not in events(tmp_path / "data")
    with lock_data_dir(tmp_path / "data"):  # the OS released the lock
        pass


def test_sigterm_during_startup_stops_started_services(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    gate = tmp_path / "never"
    child = spawn(tmp_path, sample_config(tmp_path / "data", after={"wait_for_file": str(gate)}))
    child.wait_log(r"waiting for file")
    child.signal(signal.SIGTERM)
    assert child.wait_exit() == 0
    assert events(tmp_path / "data")[2:] == [
        "start sample_after",
        "hook stopping",  # no "hook started": start-up never finished
        "stop sample_after",  # stop() is called after an unfinished start, too
        "stopped sample_after",
        "stop sample_service",
        "stopped sample_service",
    ]
    assert connect_refused(child.addr_of("sample_service"))
    assert error_lines(child.log()) == []


def test_readyz_is_503_until_every_service_is_ready(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    gate = tmp_path / "gate"
    child = spawn(tmp_path, sample_config(tmp_path / "data", after={"wait_for_file": str(gate)}))
    url = child.diag_url
    child.wait_log(r"waiting for file")

    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    response = httpx.get(f"{url}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "teleport is starting"
    assert body["services"] == {
        "sample_service": {"ready": True, "reason": ""},
        "sample_after": {"ready": False, "reason": "starting"},
    }
    metrics = httpx.get(f"{url}/metrics").text
    assert 'teleport_service_ready{service="sample_after"} 0.0' in metrics
    assert 'teleport_service_ready{service="sample_service"} 1.0' in metrics

    gate.touch()
    child.wait_ready()
    response = httpx.get(f"{url}/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    child.signal(signal.SIGTERM)
    assert child.wait_exit() == 0


def test_metrics_endpoint(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    child = spawn(tmp_path, sample_config(tmp_path / "data", after={}))
    child.wait_ready()
    response = httpx.get(f"{child.diag_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    build = families["teleport_build_info"].samples
    assert [(s.labels["version"], s.value) for s in build] == [(__version__, 1.0)]
    ready = {s.labels["service"]: s.value for s in families["teleport_service_ready"].samples}
    assert ready == {"sample_service": 1.0, "sample_after": 1.0}
    loaded = sum(1 for info in sample_plugins().infos if info.status == "loaded")
    assert families["teleport_plugins_loaded"].samples[0].value == loaded
    start_time = families["teleport_start_time_seconds"].samples[0].value
    assert start_time > 1_600_000_000
    assert families["process_cpu_seconds"].samples[0].value > 0
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    child.signal(signal.SIGTERM)
    assert child.wait_exit() == 0


def test_sigusr1_dumps_diagnostics_and_keeps_running(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    child = spawn(tmp_path, sample_config(tmp_path / "data", after={}))
    child.wait_ready()
    addr = child.addr_of("sample_service")
    assert echo(addr) == b"hello\n"
    child.signal(signal.SIGUSR1)
    child.wait_log(r"diagnostics dump end")
    log = child.log()
    assert re.search(r"WARN \[process\] diagnostics dump version=\S+ pid=\d+ state=running ready=True", log)
    line = re.search(r"service state service=sample_service state=running ready=True .*", log)
    assert line is not None
    assert f'"listen_addr":"{addr}"' in line.group(0)
    assert '"connections":2' in line.group(0)  # sample_after's start-up check and ours
    assert re.search(r'asyncio tasks count=([2-9]|\d\d+) names=\[.*"diag-http"', log)
    assert re.search(r"thread stack thread=MainThread thread_id=\d+\n(  File .*\n)+", log)
    # still running and serving
    assert echo(addr) == b"hello\n"
    assert httpx.get(f"{child.diag_url}/readyz").status_code == 200
    assert child.proc.poll() is None
    child.signal(signal.SIGTERM)
    assert child.wait_exit() == 0


def test_second_process_on_the_same_data_dir_refuses(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    data_dir = tmp_path / "data"
    first = spawn(tmp_path / "first", sample_config(data_dir))
    first.wait_ready()
    before = events(data_dir)

    second = spawn(tmp_path / "second", sample_config(data_dir))
    assert second.wait_exit() == 1
    message = (
        f"another teleport process (pid {first.pid}) is already using data_dir {data_dir}; "
        "stop it first or use another data_dir"
    )
    errors = error_lines(second.log())
    assert len(errors) == 1 and errors[0].endswith(f"ERROR [process] {message}")
    assert "Traceback" not in second.log()
    assert "starting service" not in second.log()
    assert events(data_dir) == before  # the second process touched nothing
    assert (data_dir / "teleport.lock").read_text().strip() == str(first.pid)

    assert first.proc.poll() is None
    assert echo(first.addr_of("sample_service")) == b"hello\n"
    assert httpx.get(f"{first.diag_url}/readyz").status_code == 200
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0


def test_failing_service_start_exits_1_and_stops_the_started_ones(
    tmp_path: Path, spawn: Callable[..., TeleportChild]
) -> None:
    data_dir = tmp_path / "data"
    child = spawn(tmp_path, sample_config(data_dir, after={"fail_start": True}))
    assert child.wait_exit() == 1
    log = child.log()
    errors = error_lines(log)
    assert len(errors) == 1, log
    assert errors[0].endswith(
        "ERROR [process] sample_after failed to start: RuntimeError: sample_after was told to fail service=sample_after"
    )
    assert "Traceback" not in log
    assert "teleport is ready" not in log
    assert events(data_dir)[2:] == [
        "start sample_after",
        "hook stopping",
        "stop sample_after",
        "stopped sample_after",
        "stop sample_service",
        "stopped sample_service",
    ]
    assert connect_refused(child.addr_of("sample_service"))
    with lock_data_dir(data_dir):
        pass


def test_failing_start_logs_traceback_at_debug(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    config = sample_config(tmp_path / "data", log={"severity": "DEBUG"}, sample={"fail_start": True})
    child = spawn(tmp_path, config)
    assert child.wait_exit() == 1
    log = child.log()
    assert "sample_service failed to start: RuntimeError: sample_service was told to fail" in log
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: sample_service was told to fail" in log.split("Traceback", 1)[1]


def test_json_log_lines_to_a_file_never_show_secrets(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    log_file = tmp_path / "teleport.log"
    config = sample_config(tmp_path / "data", log={"output": str(log_file), "format": {"output": "json"}}, after={})
    child = spawn(tmp_path, config)
    child.wait_ready()
    child.signal(signal.SIGUSR1)
    child.wait_log(r"diagnostics dump end")
    child.signal(signal.SIGTERM)
    assert child.wait_exit() == 0

    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 10
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"timestamp", "level", "component", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    started = [r for r in records if r["message"] == "service started" and r["component"] == "sample"]
    assert started and started[0]["password"] == "***" and started[0]["api_token"] == "***"
    assert started[0]["configured"] == "Secret(***)"
    assert {r["component"] for r in records} >= {"process", "sample", "sample_after", "diag"}
    stacks = [r for r in records if r["message"] == "thread stack"]
    assert stacks and all("File " in r["stack"] for r in stacks)
    assert log_file.stat().st_mode & 0o077 == 0
    for text in (log_file.read_text(), child.stderr(), (tmp_path / "teleport.stdout").read_text()):
        assert SECRET not in text


def test_text_logs_never_show_secrets(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    child = spawn(tmp_path, sample_config(tmp_path / "data", log={"severity": "DEBUG"}, after={"password": SECRET}))
    child.wait_ready()
    child.signal(signal.SIGUSR1)
    child.wait_log(r"diagnostics dump end")
    child.signal(signal.SIGTERM)
    assert child.wait_exit() == 0
    log = child.log()
    assert "INFO [sample] service started" in log and "api_token=***" in log
    assert SECRET not in log


def test_file_log_output_also_prints_start_errors_to_stderr(
    tmp_path: Path, spawn: Callable[..., TeleportChild]
) -> None:
    log_file = tmp_path / "teleport.log"
    child = spawn(
        tmp_path, sample_config(tmp_path / "data", log={"output": str(log_file)}, sample={"fail_start": True})
    )
    assert child.wait_exit() == 1
    assert (
        child.stderr().strip() == "ERROR: sample_service failed to start: RuntimeError: sample_service was told to fail"
    )
    assert "sample_service failed to start" in log_file.read_text()


def test_broken_plugins_are_refused_one_line_each(tmp_path: Path, spawn: Callable[..., TeleportChild]) -> None:
    plugins = "tests.plugins.sample_service,tests.plugins.missing_one,tests.plugins.missing_two"
    child = spawn(tmp_path, sample_config(tmp_path / "data"), plugins=plugins)
    assert child.wait_exit() == 1
    errors = error_lines(child.log())
    assert len(errors) == 2, child.log()
    for line, name in zip(errors, ("missing_one", "missing_two"), strict=True):
        assert re.search(rf'ERROR \[process\] plugin "\S+tests\.plugins\.{name}" .* is broken: failed to import', line)
    assert not (tmp_path / "data").exists()  # refused before touching anything


# -- in-process ------------------------------------------------------------------------------------


def test_start_cluster_runs_services_and_tracks_readiness(tmp_path: Path) -> None:
    plugins = sample_plugins()
    with start_cluster(sample_config(tmp_path / "data", after={}), plugins) as cluster:
        process = cluster.process
        assert process.ready and process.state == "running"
        assert list(process.services) == ["sample_service", "sample_after"]
        assert cluster.diag_url is not None
        assert httpx.get(f"{cluster.diag_url}/readyz").json() == {"status": "ok"}

        service: Any = process.services["sample_after"]
        cluster.call(lambda: _set_ready(service, False, "lost upstream"))
        response = httpx.get(f"{cluster.diag_url}/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "degraded",
            "services": {
                "sample_service": {"ready": True, "reason": ""},
                "sample_after": {"ready": False, "reason": "lost upstream"},
            },
        }
        assert 'teleport_service_ready{service="sample_after"} 0.0' in httpx.get(f"{cluster.diag_url}/metrics").text
        cluster.call(lambda: _set_ready(service, True))
        assert httpx.get(f"{cluster.diag_url}/readyz").status_code == 200
        addr = cluster.process.services["sample_service"].diagnostics()["listen_addr"]
    assert process.state == "stopped"
    assert connect_refused(addr)
    assert events(tmp_path / "data")[-1] == "stopped sample_service"


async def _set_ready(service: Any, ready: bool, reason: str = "") -> None:
    service.ctx.set_ready(ready, reason)


def test_start_cluster_reports_a_failing_service(tmp_path: Path) -> None:
    config = sample_config(tmp_path / "data", after={"fail_start": True})
    with pytest.raises(ClusterStartError) as info:
        start_cluster(config, sample_plugins())
    message = str(info.value)
    assert "sample_after failed to start: RuntimeError: sample_after was told to fail" in message
    assert "sample_service: not ready (stopped)" in message
    assert "sample_after: not ready (RuntimeError: sample_after was told to fail)" in message
    with lock_data_dir(tmp_path / "data"):
        pass


def test_start_cluster_times_out_with_the_services_state(tmp_path: Path) -> None:
    config = sample_config(tmp_path / "data", after={"wait_for_file": str(tmp_path / "never")})
    with pytest.raises(
        ClusterStartError, match=r"did not become ready within 1s; services: .*sample_after: not ready \(starting\)"
    ):
        start_cluster(config, sample_plugins(), timeout=1)
    assert events(tmp_path / "data")[-1] == "stopped sample_service"


def test_temporary_data_dir_is_removed(tmp_path: Path) -> None:
    config = sample_config(tmp_path / "unused")
    del config["teleport"]["data_dir"]
    with start_cluster(config, sample_plugins()) as cluster:
        data_dir = cluster.config.data_dir
        assert (data_dir / "teleport.lock").exists()
    assert not data_dir.exists()


def test_stop_timeout_and_failing_hooks_are_logged_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from teleport_core.config.model import LogConfig
    from teleport_core.logs import configure_logging, reset_logging

    configure_logging(LogConfig())
    try:
        config = sample_config(tmp_path / "data", sample={"stop_delay": "1h", "hook_fail": True})
        with start_cluster(config, sample_plugins(), stop_timeout=0.5) as cluster:
            assert cluster.process.ready
        assert cluster.process.state == "stopped"
    finally:
        reset_logging()
    err = capsys.readouterr().err
    assert re.search(
        r"ERROR \[process\] plugin \"\S+\" - \(entry point \"tests.plugins.sample_service\"\): "
        r"hook teleport_process_started failed: RuntimeError: sample hook exploded",
        err,
    ), err
    assert "teleport is ready" in err
    assert "WARN [process] sample_service did not stop within 0.5s service=sample_service" in err
    assert "teleport stopped" in err


def test_broken_plugin_refuses_to_start(tmp_path: Path) -> None:
    plugins = make_plugins(extra=["tests.plugins.sample_service", "tests.plugins.no_such_module"])
    config = parse_config(sample_config(tmp_path / "data"), plugins)
    process = TeleportProcess(config, plugins)
    with pytest.raises(PluginError, match=r"tests\.plugins\.no_such_module.* is broken: failed to import"):
        asyncio.run(process.start())
    assert not (tmp_path / "data").exists()  # refused before touching data_dir


def test_dependency_cycle_is_an_error_naming_the_sections(tmp_path: Path) -> None:
    plugins = make_plugins(extra=["tests.plugins.sample_service", "tests.plugins.cycle_services"])
    data = sample_config(tmp_path / "data", after={})
    data.update({"cycle_a": {}, "cycle_b": {}, "cycle_c": {}})
    config = parse_config(data, plugins)
    with pytest.raises(PluginError, match=r"cycle \(ServiceSpec.after\): cycle_a -> cycle_c -> cycle_b -> cycle_a"):
        start_order(config, plugins)
    process = TeleportProcess(config, plugins)
    with pytest.raises(PluginError, match="cycle"):
        asyncio.run(process.start())
    assert not (tmp_path / "data").exists()


def test_start_order_ignores_disabled_dependencies(tmp_path: Path) -> None:
    plugins = sample_plugins()
    config = parse_config(sample_config(tmp_path / "data", after={}), plugins)
    assert [name for name, _, _ in start_order(config, plugins)] == ["sample_service", "sample_after"]
    data = sample_config(tmp_path / "data", after={})
    data["sample_service"]["enabled"] = False
    config = parse_config(data, plugins)
    assert [name for name, _, _ in start_order(config, plugins)] == ["sample_after"]


def test_process_start_failure_raises_start_error_and_cleans_up(tmp_path: Path) -> None:
    plugins = sample_plugins()
    config = parse_config(sample_config(tmp_path / "data", after={"fail_start": True}), plugins)

    async def scenario() -> TeleportProcess:
        process = TeleportProcess(config, plugins)
        with pytest.raises(StartError, match="sample_after failed to start"):
            await process.start()
        return process

    process = asyncio.run(scenario())
    assert process.state == "stopped"
    assert {name: unit.state for name, unit in process.units.items()} == {
        "sample_service": "stopped",
        "sample_after": "stopped",
    }
    assert (
        process.readiness().status == "teleport failed to start: sample_after failed to start: "
        "RuntimeError: sample_after was told to fail"
    )
    with lock_data_dir(tmp_path / "data"):
        pass


def test_wait_for_helper_returns_the_value_or_fails_on_timeout() -> None:
    values = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(values), "a truthy value", 5, interval=0) == "ready"
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0.1 s waiting for nothing \(last: None\)"):
        wait_for(lambda: None, "nothing", 0.1)


class HookRecorder:
    """Records the process hooks with what the process looked like at each call."""

    def __init__(self) -> None:
        self.process: TeleportProcess | None = None
        self.started: list[tuple[Any, dict[str, Any], bool]] = []
        self.stopping: list[tuple[Any, dict[str, str]]] = []

    @hookimpl
    def teleport_process_started(self, config: Any, services: Any) -> None:
        assert self.process is not None
        self.started.append((config, dict(services), self.process.ready))

    @hookimpl
    def teleport_process_stopping(self, config: Any) -> None:
        assert self.process is not None
        self.stopping.append((config, {name: unit.state for name, unit in self.process.units.items()}))


@pytest.mark.hook_call_site("teleport_services", "teleport_process_started")
def test_hook_teleport_process_started(tmp_path: Path) -> None:
    plugins = sample_plugins()
    recorder = HookRecorder()
    plugins.pm.register(recorder, name="recorder")  # after the sample plugin, whose hook raises
    config = parse_config(sample_config(tmp_path / "data", sample={"hook_fail": True}, after={}), plugins)

    async def scenario() -> TeleportProcess:
        process = recorder.process = TeleportProcess(config, plugins)
        await process.start()
        assert process.state == "running"  # a failing hook does not stop the process
        await process.stop()
        return process

    process = asyncio.run(scenario())
    [(got_config, services, ready)] = recorder.started
    assert got_config is config
    assert ready  # called once every service is ready
    assert list(services) == ["sample_service", "sample_after"]
    assert all(isinstance(service, SampleService) for service in services.values())
    assert services == dict(process.services)
    assert "hook started sample_service,sample_after" in events(tmp_path / "data")  # the failing hook ran too


@pytest.mark.hook_call_site("teleport_process_stopping")
def test_hook_teleport_process_stopping(tmp_path: Path) -> None:
    plugins = sample_plugins()
    recorder = HookRecorder()
    plugins.pm.register(recorder, name="recorder")
    config = parse_config(sample_config(tmp_path / "data", after={}), plugins)

    async def scenario() -> None:
        process = recorder.process = TeleportProcess(config, plugins)
        await process.start()
        await asyncio.gather(process.stop(), process.stop())
        await process.stop()

    asyncio.run(scenario())
    # called once, before any service stops
    assert recorder.stopping == [(config, {"sample_service": "running", "sample_after": "running"})]

    # also when start-up fails, with the services that did start still running
    recorder = HookRecorder()
    plugins = sample_plugins()
    plugins.pm.register(recorder, name="recorder")
    config = parse_config(sample_config(tmp_path / "data2", after={"fail_start": True}), plugins)

    async def failing() -> None:
        process = recorder.process = TeleportProcess(config, plugins)
        with pytest.raises(StartError):
            await process.start()

    asyncio.run(failing())
    assert recorder.started == []
    assert recorder.stopping == [(config, {"sample_service": "running", "sample_after": "failed"})]


def test_service_can_request_stop_from_another_thread(tmp_path):
    """ctx.request_stop(reason), called from a worker thread, shuts the process down cleanly."""
    import asyncio
    import threading

    from teleport_core import hookimpl
    from teleport_core.config.load import parse_config
    from teleport_core.plugins import make_plugins
    from teleport_core.process import TeleportProcess
    from teleport_core.service import Service
    from teleport_core.specs import ServiceSpec

    class Quitter(Service):
        def __init__(self, ctx):
            self.ctx = ctx

        async def start(self):
            threading.Timer(0.05, self.ctx.request_stop, args=("disk gone",)).start()

        async def stop(self):
            pass

    class Plugin:
        @hookimpl
        def teleport_services(self):
            return [ServiceSpec("quit_service", "quit", Quitter)]

    plugins = make_plugins(entry_points=False, extra=[], objects=[("q", Plugin()), *_builtin_objects()])
    text = {"teleport": {"data_dir": str(tmp_path)}, "auth_service": {"enabled": False},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(parse_config(text, plugins), plugins)

    async def run():
        await process.start()
        await asyncio.wait_for(process.wait(), 10)
        await process.stop()

    asyncio.run(run())
    assert process.state == "stopped"
    assert "disk gone" in process._stop_reason


def _builtin_objects():
    from teleport_core.state import lookup_plugin
    from teleport_core.state.backends import file_sessions_plugin, sqlite_plugin

    return [("sqlite", sqlite_plugin), ("files", file_sessions_plugin), ("lookup", lookup_plugin)]
