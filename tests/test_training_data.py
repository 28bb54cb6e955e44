"""The example stream: sources in the store and in files, the general mix, the shuffle, and each
rank's share (resuming on any number of ranks sees exactly what an uninterrupted job would)."""

from __future__ import annotations

import json
import random
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autosafe_core.ots import RiskSource, stable_id
from autosafe_core.store import ChatMessage, DatasetRow, Run, StorageConfig, commit_shard
from autosafe_core.training.examples import Example, FileSource, RunSource, to_example
from autosafe_core.training.stream import Mix, global_stream, interleave, plan_mix, rank_stream, shuffled, total_steps


def dataset_row(i: int, split: str) -> DatasetRow:
    return DatasetRow(
        id=stable_id("row", i), safe_sample_id=f"s{i}", scenario_id=f"scn{i}", split=split, risk_outcome="data_loss",
        risk_source=RiskSource.ACTION, messages=[ChatMessage(role="user", content=f"task {i}")], target=f"safe {i}",
    )  # fmt: skip


def test_a_run_source_streams_one_split_of_the_dataset_table_and_counts_it_from_commit_records(tmp_path):
    run = Run(run_id="r", storage=StorageConfig(uri=str(tmp_path)))
    commit_shard(run, "dataset", "dataset", "train", [dataset_row(i, "train") for i in range(5)])
    commit_shard(run, "dataset", "dataset", "test", [dataset_row(9, "test")])

    source = RunSource(run, "train")

    assert source.count() == 5
    assert [e.target for e in source] == [f"safe {i}" for i in range(5)]
    assert next(iter(source)).messages == [{"role": "user", "content": "task 0"}]
    assert RunSource(run, "validation").count() == 0 and list(RunSource(run, "validation")) == []


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"messages": [{"role": "user", "content": "q"}], "target": "a"}, Example([{"role": "user", "content": "q"}], "a")),
        (
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            Example([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "a"),
        ),
        ({"prompt": "q", "response": "a"}, Example([{"role": "user", "content": "q"}], "a")),
        ({"instruction": "do", "input": "this", "output": "done"}, Example([{"role": "user", "content": "do\n\nthis"}], "done")),
        ({"instruction": "do", "input": "", "output": "done"}, Example([{"role": "user", "content": "do"}], "done")),
    ],
)
def test_general_sets_come_as_chats_prompt_response_or_instruction_rows(row, expected):
    assert to_example(row, "x") == expected


@pytest.mark.parametrize(
    ("row", "named"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "field 'messages' must end with an assistant turn"),
        ({"messages": [{"role": "user"}], "target": "a"}, "messages[0]: a turn is an object with 'role' and 'content'"),
        ({"prompt": "q"}, "field 'response' missing or empty"),
        ({"text": "free text"}, "no 'messages', 'prompt'/'response' or 'instruction'/'output' fields"),
    ],
)
def test_a_row_that_is_no_example_is_named_with_its_field(row, named):
    with pytest.raises(ValueError, match=rf"^general.jsonl: line 3: .*{named.replace('[', '.').replace(']', '.')}"):
        to_example(row, "general.jsonl: line 3")


def test_jsonl_and_parquet_files_stream_their_rows_and_a_bad_line_is_named(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(3)]
    jsonl = tmp_path / "general.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    parquet = tmp_path / "general.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)

    for path in (jsonl, parquet):
        source = FileSource(str(path))
        assert source.check() == 3
        assert [e.target for e in source] == ["a0", "a1", "a2"]

    jsonl.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=rf"^{jsonl}: line 2: not JSON"):
        list(FileSource(str(jsonl)))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'none.jsonl'}: no such file$"):
        FileSource(str(tmp_path / "none.jsonl")).check()


def test_the_general_ratio_spreads_general_examples_evenly_among_the_safe_ones():
    mix = plan_mix(safe=8, general_available=100, ratio=0.2)
    assert mix == Mix(safe=8, general=2)

    order = list(interleave([f"s{i}" for i in range(8)], [f"g{i}" for i in range(100)], mix))

    assert len(order) == 10 and sum(x.startswith("g") for x in order) == 2
    assert order.index("g0") < 5 < order.index("g1"), order
    assert plan_mix(safe=8, general_available=1, ratio=0.5) == Mix(8, 1), "no more than the set holds"
    assert plan_mix(safe=8, general_available=100, ratio=0.0) == Mix(8, 0)


def test_the_shuffle_is_a_permutation_fixed_by_its_seed_and_mixes_beyond_its_buffer():
    items = list(range(100))
    first = list(shuffled(items, buffer=10, rng=random.Random(3)))
    assert sorted(first) == items and first != items
    assert first == list(shuffled(items, buffer=10, rng=random.Random(3)))
    assert first != list(shuffled(items, buffer=10, rng=random.Random(4)))


class Counted:
    """A source of n numbered examples."""

    def __init__(self, n: int):
        self.n, self.name = n, f"{n} examples"

    def count(self) -> int:
        return self.n

    def __iter__(self):
        return (Example([{"role": "user", "content": str(i)}], str(i)) for i in range(self.n))


def test_ranks_share_the_global_stream_and_a_resume_on_another_world_size_continues_it_exactly():
    def stream():
        return global_stream(Counted(7), None, Mix(7, 0), buffer=4, seed=0)

    whole = [e.target for e in islice(stream(), 40)]
    assert sorted(whole[:7]) == [str(i) for i in range(7)] and whole[:7] != whole[7:14], "epochs reshuffle"

    # Two ranks, micro-batch 2: three steps take 12 global examples, dealt alternately.
    taken = [[e.target for e in islice(rank_stream(stream(), r, 2), 6)] for r in (0, 1)]
    assert [x for pair in zip(*taken, strict=True) for x in pair] == whole[:12]

    # Resumed after those three steps on three ranks: global example 12 onwards, nothing lost or repeated.
    resumed = [[e.target for e in islice(rank_stream(stream(), r, 3, skip=12), 4)] for r in (0, 1, 2)]
    assert [x for triple in zip(*resumed, strict=True) for x in triple] == whole[12:24]


def test_steps_come_from_max_steps_or_the_epochs_and_auto_is_short_on_a_cpu():
    mix = Mix(safe=90, general=10)
    assert total_steps("auto", 1.0, mix, per_step=8, on_cpu=True, cpu_steps=8) == 8
    assert total_steps("auto", 1.0, mix, per_step=8, on_cpu=False, cpu_steps=8) == 13
    assert total_steps(None, 2.0, mix, per_step=8, on_cpu=True, cpu_steps=8) == 25
    assert total_steps(5, 2.0, mix, per_step=8, on_cpu=False, cpu_steps=8) == 5
    assert total_steps(None, 1.0, Mix(1, 0), per_step=64, on_cpu=False, cpu_steps=8) == 1
