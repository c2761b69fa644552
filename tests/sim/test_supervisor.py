"""The supervisor under the mock clock: restarts with exponential backoff at exact times, a
crash loop that exhausts the budget fails the process, and the health record is kept."""

from __future__ import annotations

import attrs
import pytest
import trio

from tickhub.actors.supervisor import RestartBudgetExceeded, RestartPolicy, Supervisor


@attrs.define
class Flaky:
    """Crashes the first `crashes` incarnations right after starting; then runs until told."""

    log: list
    crashes: int
    done: trio.Event

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        self.log.append(trio.current_time())
        task_status.started()
        if len(self.log) <= self.crashes:
            raise ValueError(f"boom {len(self.log)}")
        await self.done.wait()


async def test_restarts_back_off_exponentially(autojump_clock):
    starts: list[float] = []
    done = trio.Event()
    policy = RestartPolicy(max_restarts=5, window_s=60, backoff_initial_s=0.1, backoff_max_s=10)
    restarted: list[str] = []
    async with trio.open_nursery() as nursery:
        sup = Supervisor(nursery, policy, on_restart=restarted.append)  # feeds the metric
        await sup.start("flaky", lambda h: Flaky(starts, 3, done), restart=True)
        await trio.sleep(5)
        health = sup.actors["flaky"]
        assert health.state == "running"
        assert health.restarts == 3
        assert health.last_error == "ValueError: boom 3"
        done.set()
    # crash at 0 → restart after 0.1; at 0.1 → 0.2 later; at 0.3 → 0.4 later.
    assert starts == pytest.approx([0.0, 0.1, 0.3, 0.7])
    assert restarted == ["flaky"] * 3
    assert health.state == "stopped"


async def test_crash_loop_exhausts_the_budget_and_fails_the_process(autojump_clock):
    starts: list[float] = []
    policy = RestartPolicy(max_restarts=3, window_s=60, backoff_initial_s=0.5, backoff_max_s=1)
    with pytest.RaisesGroup(pytest.RaisesExc(RestartBudgetExceeded, match="actor loop failed")):
        async with trio.open_nursery() as nursery:
            sup = Supervisor(nursery, policy)
            await sup.start("loop", lambda h: Flaky(starts, 10**6, trio.Event()), restart=True)
            await trio.sleep_forever()
    assert len(starts) == 4  # the first run and 3 restarts, then the process fails
    assert sup.actors["loop"].state == "failed"
    assert not sup.healthy


async def test_crashes_spread_beyond_the_window_do_not_fail(autojump_clock):
    starts: list[float] = []
    policy = RestartPolicy(max_restarts=1, window_s=10, backoff_initial_s=0.1, backoff_max_s=1)

    @attrs.define
    class Slow(Flaky):
        async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
            self.log.append(trio.current_time())
            task_status.started()
            await trio.sleep(30)  # long enough that earlier crashes leave the window
            if len(self.log) <= self.crashes:
                raise ValueError("rare")
            await self.done.wait()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        sup = Supervisor(nursery, policy)
        await sup.start("rare", lambda h: Slow(starts, 3, done), restart=True)
        await trio.sleep(200)
        assert sup.actors["rare"].restarts == 3 and sup.healthy
        done.set()


async def test_an_actor_that_cannot_start_fails_start_up():
    @attrs.define
    class Broken:
        async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
            raise OSError("port in use")

    with pytest.RaisesGroup(pytest.RaisesExc(OSError, match="port in use")):
        async with trio.open_nursery() as nursery:
            sup = Supervisor(nursery)
            await sup.start("broken", lambda h: Broken(), restart=True)


async def test_health_record_reports_mailbox_depth_and_activity(autojump_clock):
    tx, rx = trio.open_memory_channel(10)

    @attrs.define
    class Idle:
        health: object

        async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
            self.health.touch()
            task_status.started()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        sup = Supervisor(nursery)
        await sup.start("idle", Idle, mailbox=rx)
        for i in range(3):
            tx.send_nowait(i)
        (row,) = sup.table()
        assert row["name"] == "idle" and row["mailboxDepth"] == 3
        assert row["lastActivity"] is not None and row["state"] == "running"
        nursery.cancel_scope.cancel()
