"""The shard pipeline's submission order: a bounded number of tasks in flight, and a started
shard's next stage before a new shard. The stage tasks are replaced by recorders (what is
tested is the order the pipeline submits in, not the tasks); the factory tests run the real ones."""

from __future__ import annotations

import pytest

from flows import pipeline
from flows.pipeline import StageProgress, _Shards, make_run
from tests.support.factory import scripted_config


class _Future:
    def __init__(self, log: list, label: tuple[str, str]):
        self.label = label
        self.callbacks: list = []
        log.append(self)

    def add_done_callback(self, fn) -> None:
        self.callbacks.append(fn)

    def finish(self) -> None:
        for fn in self.callbacks:
            fn(self)


class _Recorder:
    def __init__(self, stage: str, log: list):
        self.stage, self.log = stage, log

    def submit(self, run, shard_id, *args):
        return _Future(self.log, (self.stage, shard_id))


@pytest.fixture
def submitted(monkeypatch) -> list[_Future]:
    log: list[_Future] = []
    monkeypatch.setattr(pipeline, "generate_shard", _Recorder("generate", log))
    monkeypatch.setattr(pipeline, "rollout_shard", _Recorder("rollout", log))
    return log


def _shards(tmp_path, slots) -> _Shards:
    config = scripted_config(tmp_path, scenarios=12, shard_size=4)  # shards 00000, 00001, 00002
    wanted = ["generate", "rollout"]
    todo = {stage: config.shards() for stage in wanted}
    refs = {role: f"engine-{role}" for role in ("generator", "agent", "simulator", "evaluator")}
    return _Shards(make_run(config), config, wanted, todo, refs, StageProgress(), slots)


def _finish_next(shards: _Shards, future: _Future) -> None:
    """The task of `future` ends and the pipeline reacts as `_follow` does."""
    future.finish()
    _, shard_id, _ = next(shards.finished())
    shards.advance(shard_id)


def test_at_most_slots_tasks_are_in_flight_and_a_started_shard_goes_on_before_a_new_one(tmp_path, submitted):
    shards = _shards(tmp_path, slots=lambda: 2)
    shards.start()
    assert [f.label for f in submitted] == [("generate", "00000"), ("generate", "00001")]

    _finish_next(shards, submitted[0])  # generate 00000 done: its rollout takes the slot, not shard 00002
    assert [f.label for f in submitted[2:]] == [("rollout", "00000")]
    assert shards.in_flight == 2

    _finish_next(shards, submitted[2])  # rollout 00000 done: shard 00000 is through, a new shard starts
    assert [f.label for f in submitted[3:]] == [("generate", "00002")]

    done = {id(submitted[0]), id(submitted[2])}
    while shards.in_flight:
        future = next(f for f in submitted if id(f) not in done)
        done.add(id(future))
        _finish_next(shards, future)
    assert sorted(f.label for f in submitted) == sorted(
        (stage, shard) for stage in ("generate", "rollout") for shard in ("00000", "00001", "00002")
    )


def test_without_a_slot_limit_every_shard_starts_at_once(tmp_path, submitted):
    shards = _shards(tmp_path, slots=None)
    shards.start()
    assert [f.label for f in submitted] == [("generate", s) for s in ("00000", "00001", "00002")]


def test_a_grown_cluster_gets_more_tasks_at_the_next_refill(tmp_path, submitted):
    capacity = [1]
    shards = _shards(tmp_path, slots=lambda: capacity[0])
    shards.start()
    assert len(submitted) == 1
    capacity[0] = 3
    _finish_next(shards, submitted[0])
    assert [f.label for f in submitted[1:]] == [("rollout", "00000"), ("generate", "00001"), ("generate", "00002")]
