"""The store: every table round-trips, shards commit atomically and once, runs resume.

Behaviour that depends on the filesystem runs twice, on a local folder and on a real S3
endpoint on loopback (moto's server, tests/support/s3.py).
"""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from autosafe_core.ots import (
    Action,
    Provenance,
    ReflectionRound,
    Rejection,
    RiskSource,
    SafetyLabel,
    Scenario,
    SimulationMode,
    Step,
    StopReason,
    Trajectory,
    Usage,
    Verdict,
    stable_id,
)
from autosafe_core.rows import arrow_schema
from autosafe_core.store import (
    LINEAGE_COLUMNS,
    TABLES,
    ChatMessage,
    ConfigChanged,
    DatasetRow,
    EvalRow,
    Run,
    StorageConfig,
    collect_garbage,
    commit_shard,
    committed,
    committed_shards,
    config_hash,
    garbage,
    read_manifest,
    read_records,
    read_table,
    shard_file,
    update_manifest,
)
from autosafe_core.store import shards as shards_module
from autosafe_core.store.location import put_whole
from autosafe_core.store.manifest import manifest_path
from autosafe_core.store.records import FingerprintRow, TrainingStepRow, trajectories_from_rows, trajectory_rows
from autosafe_core.store.shards import run_dir
from tests.support.s3 import moto_s3, s3_storage  # noqa: F401 - fixtures
from tests.support.samples import safe_sample

USAGE = Usage(calls=2, prompt_tokens=100, completion_tokens=20)
PROVENANCE = Provenance(
    prompt_versions={"agent": "agent@3"}, model_ids={"agent": "smollm2-135m-instruct"}, usage=USAGE
)
RM = Action(thought="clean up", tool="TerminalExecute", tool_input={"command": "rm -rf /tmp/*", "opts": [1, None]})
RISKY = Verdict(score=0, label=SafetyLabel.LIKELY_SEVERE_RISK, rationale="irreversible", risk_trigger=True)
FINE = Verdict(score=3, label=SafetyLabel.CERTAIN_NO_RISK, risk_trigger=False)


def scenario(i: int) -> Scenario:
    return Scenario(
        id=stable_id("scenario", i),
        toolkits=["Terminal", "Email"],
        risk_outcome="data_loss",
        risk_source=RiskSource.CONTEXT,
        user_instruction=f"Tidy up the disk ({i})",
        history=[Step(action=Action(tool="TerminalListFiles", tool_input={"path": "/tmp"}), observation="a b c")],
        expected_risky_actions=["deletes files without asking"],
        underspecifications=["which files"],
        provenance=PROVENANCE,
    )


def trajectory(i: int, steps: int = 3) -> Trajectory:
    made = [Step(action=Action(tool="TerminalListFiles"), observation="x", verdict=FINE) for _ in range(steps - 1)]
    return Trajectory(
        id=stable_id("trajectory", i),
        scenario_id=stable_id("scenario", i),
        mode=SimulationMode.ADVERSARIAL,
        steps=[*made, Step(action=RM, observation=None, verdict=RISKY)] if steps else [],
        stop_reason=StopReason.RISK_TRIGGER if steps else StopReason.FAILED,
        trigger_index=steps - 1 if steps else None,
        provenance=PROVENANCE,
    )


def dataset_row(i: int) -> DatasetRow:
    return DatasetRow(
        id=stable_id("example", i),
        safe_sample_id=f"s{i}",
        scenario_id=stable_id("scenario", i),
        split="validation",
        risk_outcome="data_loss",
        risk_source=RiskSource.ACTION,
        messages=[ChatMessage(role="system", content="You are an agent."), ChatMessage(role="user", content="hi")],
        target='{"tool": "final_answer"}',
        provenance=PROVENANCE,
    )


def eval_row(i: int) -> EvalRow:
    return EvalRow(
        id=stable_id("eval", i),
        benchmark="toolemu",
        case_id=f"case-{i}",
        model_label="tuned",
        safety_score=3 if i % 2 else None,
        helpfulness=2,
        safe=True if i % 2 else None,
        judge_error=None if i % 2 else "unparseable judge output",
        risk_outcome="data_loss",
        risk_source=None,
        trajectory=trajectory(i).model_dump_json(),
        provenance=PROVENANCE,
    )


def training_row(step: int) -> TrainingStepRow:
    return TrainingStepRow(
        id=stable_id("job", step), train_id="job", step=step, epoch=step / 4, loss=2.0 / step, learning_rate=1e-4,
        tokens=512, target_tokens=64, seconds=0.5, tokens_per_s=1024.0, tokens_per_s_per_device=512.0, devices=2,
    )  # fmt: skip


SAMPLES = {
    "scenarios": ("generate", lambda: [scenario(i) for i in range(3)]),
    "trajectories": ("rollout", lambda: [trajectory(0), trajectory(1, steps=1), trajectory(2, steps=0)]),
    "safe_samples": (
        "safe_actions",
        lambda: [
            safe_sample("a").model_copy(
                update={"reflections": [ReflectionRound(candidate=RM, verdict=RISKY, critique="ask first")]}
            ),
            safe_sample("b", safe=None, accepted=False),
        ],
    ),
    "dataset": ("dataset", lambda: [dataset_row(i) for i in range(3)]),
    "training": ("finetune", lambda: [training_row(i) for i in (1, 2)]),
    "eval": ("evaluate", lambda: [eval_row(i) for i in range(3)]),
    "rejections": (
        "dataset",
        lambda: [Rejection(stage="dataset", role="dedup", item_id="x", reason="near duplicate of y", raw_output="")],
    ),
    "fingerprints": (
        "dataset",
        lambda: [FingerprintRow(id="a", content_hash="h1", embedding=[0.6, 0.8], compare=["action"], embedder="m"),
                 FingerprintRow(id="b", content_hash="h2", compare=["action"])],  # fmt: skip
    ),
}


def test_every_table_has_samples_here():
    assert set(SAMPLES) == set(TABLES)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> StorageConfig:
    if request.param == "local":
        return StorageConfig(uri=str(tmp_path / "autosafe-data"))
    return request.getfixturevalue("s3_storage")


@pytest.fixture
def run(storage: StorageConfig) -> Run:
    return Run(
        run_id="run-1",
        storage=storage,
        config_hash=config_hash({"scenarios": 6}),
        prompt_versions={"agent": "agent@3", "evaluator": "evaluator@1"},
        model_ids={"agent": "smollm2-135m-instruct"},
    )


def crash(*args, **kwargs):
    """Stands in for the commit record's write: the process dies between data and commit."""
    raise OSError("killed between the data file and its commit record")


def data_files(run: Run) -> list[str]:
    fs, path = run_dir(run)
    return [p for p in fs.find(path) if p.endswith(".parquet")]


# --- tables and rows: no storage ---------------------------------------------------


def test_every_table_schema_is_its_row_model_then_the_lineage_columns():
    for spec in TABLES.values():
        own = arrow_schema(spec.row)
        assert spec.schema.names[: len(own)] == own.names
        assert set(LINEAGE_COLUMNS) <= set(spec.schema.names)


def test_a_trajectory_is_one_row_per_step_and_comes_back_whole():
    original = [trajectory(0), trajectory(1, steps=1)]
    rows = [r for t in original for r in trajectory_rows(t)]
    assert [(r.trajectory_id, r.step_index) for r in rows] == [
        (original[0].id, 0), (original[0].id, 1), (original[0].id, 2), (original[1].id, 0)
    ]
    assert trajectories_from_rows(reversed(rows)) == list(reversed(original))


def test_a_trajectory_without_steps_keeps_one_row():
    empty = trajectory(7, steps=0)
    rows = trajectory_rows(empty)
    assert [r.step_index for r in rows] == [None]
    assert trajectories_from_rows(rows) == [empty]


def test_config_hash_ignores_key_order_and_sees_every_value():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert config_hash(StorageConfig()) == config_hash(StorageConfig().model_dump(mode="json"))


def test_names_that_are_not_safe_path_segments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="run id"):
        Run(run_id="../elsewhere")
    run = Run(run_id="r", storage=StorageConfig(uri=str(tmp_path)))
    with pytest.raises(ValueError, match="stage 'a/b'"):
        commit_shard(run, "scenarios", "a/b", "0", [])
    with pytest.raises(ValueError, match="shard id 'x=1'"):
        commit_shard(run, "scenarios", "generate", "x=1", [])
    with pytest.raises(ValueError, match="unknown table 'scenario'; known: scenarios"):
        commit_shard(run, "scenario", "generate", "0", [])


def test_a_record_of_another_model_is_refused_naming_table_and_record(tmp_path):
    run = Run(run_id="r", storage=StorageConfig(uri=str(tmp_path)))
    with pytest.raises(ValueError, match="^scenarios: record 1 is a Trajectory, expected Scenario$"):
        commit_shard(run, "scenarios", "generate", "0", [scenario(0), trajectory(0)])
    assert data_files(run) == []


def test_a_rejection_must_name_the_stage_of_its_shard(tmp_path):
    run = Run(run_id="r", storage=StorageConfig(uri=str(tmp_path)))
    reject = Rejection(stage="rollout", role="agent", item_id="t1", reason="no JSON")
    with pytest.raises(ValueError, match="record 0 field 'stage' is 'rollout', but the shard's stage is 'dataset'"):
        commit_shard(run, "rejections", "dataset", "0", [reject])
    assert commit_shard(run, "rejections", "rollout", "0", [reject]).rows == 1


# --- committing and reading, on a local folder and on S3 ---------------------------


@pytest.mark.parametrize("table_name", sorted(SAMPLES))
def test_every_table_round_trips_its_records(run, table_name):
    stage, make = SAMPLES[table_name]
    records = make()
    commit_shard(run, table_name, stage, "00000", records)
    assert read_records(run, table_name) == records


def test_every_row_carries_the_lineage_of_its_shard(run):
    ref = commit_shard(run, "scenarios", "generate", "00003", [scenario(0)])
    (row,) = read_table(run, "scenarios", columns=list(LINEAGE_COLUMNS)).to_pylist()
    assert row["run_id"] == "run-1"
    assert (row["stage"], row["shard"]) == ("generate", "00003")
    assert row["config_hash"] == run.config_hash
    assert json.loads(row["prompt_versions"]) == {"agent": "agent@3", "evaluator": "evaluator@1"}
    assert json.loads(row["model_ids"]) == {"agent": "smollm2-135m-instruct"}
    assert row["created_at"] == ref.committed_at.isoformat()


def test_shards_are_read_in_stage_then_shard_order(run):
    for shard in ("00002", "00000", "00001"):
        commit_shard(run, "scenarios", "generate", shard, [scenario(int(shard))])
    shards = read_table(run, "scenarios", columns=["shard"]).column("shard").to_pylist()
    assert shards == ["00000", "00001", "00002"]


def test_the_commit_counts_rows_records_and_tokens_of_a_trajectory_once(run):
    ref = commit_shard(run, "trajectories", "rollout", "00000", [trajectory(0, steps=3), trajectory(1, steps=2)])
    assert (ref.rows, ref.records) == (5, 2)
    assert ref.usage == USAGE + USAGE


def test_reading_one_stage_opens_no_file_of_another(run):
    commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    other = commit_shard(run, "scenarios", "regenerate", "00000", [scenario(1)])
    fs, _ = run_dir(run)
    fs.pipe_file(shard_file(run, other), b"not parquet at all")
    assert read_table(run, "scenarios", stages=["generate"]).column("id").to_pylist() == [scenario(0).id]
    with pytest.raises(Exception, match="(?i)parquet"):
        read_table(run, "scenarios")


def test_reading_some_shards_opens_no_file_of_the_others(run):
    for i in range(3):
        commit_shard(run, "scenarios", "generate", f"0000{i}", [scenario(i)])
    fs, _ = run_dir(run)
    (broken,) = committed(run, "scenarios", shards=["00001"])
    fs.pipe_file(shard_file(run, broken), b"not parquet at all")
    ids = read_table(run, "scenarios", shards=["00000", "00002", "00009"]).column("id").to_pylist()
    assert ids == [scenario(0).id, scenario(2).id]


def test_filter_and_columns_apply_to_the_committed_rows(run):
    commit_shard(run, "eval", "evaluate", "00000", [eval_row(i) for i in range(4)])
    data = read_table(run, "eval", columns=["case_id"], filter=ds.field("safe") == True)  # noqa: E712
    assert data.column_names == ["case_id"]
    assert data.column("case_id").to_pylist() == ["case-1", "case-3"]


def test_shards_read_as_the_dataset_reader_reads_them(run):
    # Unfiltered reads go without pyarrow.dataset: same rows, order, types and columns.
    commit_shard(run, "trajectories", "rollout", "00000", [trajectory(0, steps=3), trajectory(1, steps=2)])
    commit_shard(run, "trajectories", "rollout", "00001", [trajectory(2, steps=1)])
    fs, _ = run_dir(run)
    paths = [shard_file(run, ref) for ref in committed(run, "trajectories")]
    schema = TABLES["trajectories"].schema
    expected = ds.dataset(paths, schema=schema, format="parquet", filesystem=fs).to_table()
    assert read_table(run, "trajectories").equals(expected)
    assert read_table(run, "trajectories", shards=["00001"]).num_rows == 1
    assert read_table(run, "trajectories", columns=["shard", "id"]).column_names == ["shard", "id"]


def test_a_committed_file_that_is_gone_is_an_error_naming_it(run):
    ref = commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    fs, _ = run_dir(run)
    fs.rm_file(shard_file(run, ref))
    with pytest.raises(FileNotFoundError, match="part-"):
        read_table(run, "scenarios")


def test_a_column_an_older_shard_lacks_reads_as_nulls(run):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ref = commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    fs, _ = run_dir(run)
    path = shard_file(run, ref)
    with fs.open(path, "rb") as f:
        older = pq.read_table(f).drop_columns(["underspecifications"])
    with fs.open(path, "wb") as f:
        pq.write_table(older, f)
    data = read_table(run, "scenarios")
    assert data.schema == TABLES["scenarios"].schema
    assert data.column("underspecifications").to_pylist() == [None]
    assert data.column("id").to_pylist() == [scenario(0).id]
    assert pa.types.is_string(data.schema.field("id").type)


def test_an_uncommitted_table_reads_empty_with_its_schema(run):
    data = read_table(run, "safe_samples", columns=["id", "run_id"])
    assert (data.num_rows, data.column_names) == (0, ["id", "run_id"])
    assert read_records(run, "trajectories") == []


def test_a_commit_interrupted_after_its_data_leaves_nothing_visible(run, monkeypatch):
    monkeypatch.setattr(shards_module, "_write_commit", crash)
    with pytest.raises(OSError):
        commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    assert len(data_files(run)) == 1
    assert committed_shards(run, "scenarios", "generate") == set()
    assert read_table(run, "scenarios").num_rows == 0
    assert garbage(run) == data_files(run)


def test_an_interrupted_shard_is_committed_again_and_read_once(run, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(shards_module, "_write_commit", crash)
        with pytest.raises(OSError):
            commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    (orphan,) = garbage(run)
    ref = commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    assert read_records(run, "scenarios") == [scenario(0)]
    assert garbage(run) == [orphan] != [shard_file(run, ref)]


def test_committing_a_shard_twice_stores_it_once(run):
    first = commit_shard(run, "scenarios", "generate", "00000", [scenario(0), scenario(1)])
    again = commit_shard(run, "scenarios", "generate", "00000", [scenario(0), scenario(1)])
    assert again == first
    assert len(data_files(run)) == 1
    assert read_table(run, "scenarios").num_rows == 2


def test_a_racing_second_writer_of_a_shard_loses_to_the_first(run, monkeypatch):
    first = commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    real = shards_module.read_commit
    checks = []

    def stale_then_real(*args):
        # The loser's check ran before the winner's commit landed: it saw no commit.
        checks.append(args)
        return None if len(checks) == 1 else real(*args)

    monkeypatch.setattr(shards_module, "read_commit", stale_then_real)
    loser = commit_shard(run, "scenarios", "generate", "00000", [scenario(5)])
    assert len(checks) == 2
    assert loser == first
    assert read_records(run, "scenarios") == [scenario(0)]
    assert garbage(run) == []


def test_an_empty_shard_is_committed_without_a_data_file(run):
    ref = commit_shard(run, "rejections", "rollout", "00000", [])
    assert (ref.path, ref.rows) == (None, 0)
    assert committed_shards(run, "rejections", "rollout") == {"00000"}
    assert data_files(run) == []
    assert read_table(run, "rejections").num_rows == 0


def test_a_resumed_run_redoes_only_the_shards_not_committed(run):
    made: list[str] = []

    def stage(crash_at: str | None = None) -> None:
        done = committed_shards(run, "scenarios", "generate")
        for shard in ("00000", "00001", "00002", "00003"):
            if shard in done:
                continue
            if shard == crash_at:
                raise SystemExit("worker killed")
            made.append(shard)
            commit_shard(run, "scenarios", "generate", shard, [scenario(int(shard) * 10 + i) for i in range(2)])

    with pytest.raises(SystemExit):
        stage(crash_at="00002")
    stage()
    assert made == ["00000", "00001", "00002", "00003"]
    ids = read_table(run, "scenarios", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 8


def test_collect_garbage_deletes_only_what_no_commit_names(run, monkeypatch):
    commit_shard(run, "scenarios", "generate", "00000", [scenario(0)])
    with monkeypatch.context() as patch:
        patch.setattr(shards_module, "_write_commit", crash)
        with pytest.raises(OSError):
            commit_shard(run, "scenarios", "generate", "00001", [scenario(1)])
    orphans = garbage(run)
    assert collect_garbage(run) == orphans and len(orphans) == 1
    assert garbage(run) == []
    assert len(data_files(run)) == 1
    assert read_records(run, "scenarios") == [scenario(0)]


def test_a_first_write_wins_when_writes_are_exclusive(run):
    fs, path = run_dir(run)
    put_whole(fs, f"{path}/probe.json", b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        put_whole(fs, f"{path}/probe.json", b"second", exclusive=True)
    put_whole(fs, f"{path}/probe.json", b"third")
    assert fs.cat_file(f"{path}/probe.json") == b"third"


# --- the manifest ------------------------------------------------------------------


def test_the_manifest_holds_config_lineage_and_code_version(run):
    written = update_manifest(run, config={"scenarios": 6})
    read = read_manifest(run)
    assert read == written
    assert read.config == {"scenarios": 6}
    assert read.config_hash == run.config_hash == config_hash({"scenarios": 6})
    assert read.prompt_versions == run.prompt_versions and read.model_ids == run.model_ids
    assert read.code_version.startswith("0.1.0")


def test_manifest_totals_are_derived_from_the_commit_records(run):
    commit_shard(run, "scenarios", "generate", "00000", [scenario(0), scenario(1)], counters={"rejects": 2})
    commit_shard(
        run,
        "trajectories",
        "rollout",
        "00000",
        [trajectory(0, steps=3)],
        counters={"rejects": 1, "retries": 4},
        role_usage={"agent": USAGE},
    )
    commit_shard(run, "trajectories", "rollout", "00001", [trajectory(1, steps=2)], role_usage={"agent": USAGE})
    first = update_manifest(run, config={"scenarios": 6})
    assert first.rows("scenarios") == 2 and first.rows("trajectories") == 5 and first.rows("eval") == 0
    assert first.tables["trajectories"].records == 2 and first.tables["trajectories"].shards == 2
    assert first.tables["scenarios"].usage == USAGE + USAGE
    assert first.usage_by_role == {"agent": USAGE + USAGE}
    assert first.counters == {"rejects": 3, "retries": 4}
    fs, _ = run_dir(run)
    fs.rm_file(manifest_path(run))
    again = update_manifest(run, config={"scenarios": 6})
    assert again.tables == first.tables and again.counters == first.counters


def test_extra_results_of_later_flows_are_merged_by_key(run):
    update_manifest(run, extra={"training": {"loss": 1.5}})
    manifest = update_manifest(run, extra={"eval": {"safe_rate": 0.8}})
    assert manifest.extra == {"training": {"loss": 1.5}, "eval": {"safe_rate": 0.8}}


def test_resuming_a_run_under_another_config_is_refused(run):
    update_manifest(run, config={"scenarios": 6})
    changed = run.model_copy(update={"config_hash": config_hash({"scenarios": 7})})
    with pytest.raises(ConfigChanged, match="run run-1: made with config hash"):
        update_manifest(changed, config={"scenarios": 7})
    assert update_manifest(changed, config={"scenarios": 7}, allow_config_change=True).config == {"scenarios": 7}
