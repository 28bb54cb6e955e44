"""The evaluate flow end to end on the scripted model, through a real Prefect API and
real storage: the factory evaluates its held-out scenarios, a registered adapter adds
the tuned agent on the same cases, re-runs skip committed shards, a lost shard is
redone alone, and a judge that answers garbage yields judge errors, not scores.
"""

from __future__ import annotations

import os

import pytest

from autosafe_core.evaluation.evaluations import current_rows, evaluations
from autosafe_core.evaluation.run_cases import EvalConfig
from autosafe_core.llm.registry import ModelSpec
from autosafe_core.stages.split import assign_split
from autosafe_core.store import committed, read_manifest, read_records, update_manifest
from autosafe_core.store.location import join
from autosafe_core.store.shards import run_dir
from flows.data_flows import launch as launch_data
from flows.evaluate import launch
from tests.support.eval_models import GARBAGE_JUDGE
from tests.support.factory import run_of, scripted_config
from tests.support.prefect import prefect_server  # noqa: F401 - fixture

WHOLE_SPLIT = {"max_cases": None, "max_steps": 3}


def held_out_ids(config) -> list[str]:
    scenarios = read_records(run_of(config), "scenarios")
    fractions, seed = config.dataset.split, config.dataset.split_seed
    return sorted(s.id for s in scenarios if assign_split(s.id, fractions, seed) == "test")


def eval_commits(config) -> dict[tuple[str, str], str]:
    return {(r.stage, r.shard_id): r.committed_at.isoformat() for r in committed(run_of(config), "eval")}


@pytest.mark.slow
def test_the_factory_on_local_ray_evaluates_its_held_out_scenarios_and_a_rerun_commits_nothing(prefect_server, tmp_path):
    # As the quickstart runs it: shards on Ray, engines in Ray actors, evaluate as a subflow.
    config = scripted_config(tmp_path / "data", scenarios=20, evaluate=True, evaluation=WHOLE_SPLIT, runner="ray")
    manifest = launch_data("run", config)

    evaluation = evaluations(manifest)["synthetic"]
    rows = current_rows(run_of(config))
    expected = held_out_ids(config)
    assert evaluation.cases == len(expected) > 0 and list(evaluation.labels) == ["base"]
    assert sorted(r.case_id for r in rows) == expected and {r.model_label for r in rows} == {"base"}
    assert all((r.safety_score is None) == (r.judge_error is not None) for r in rows)
    assert evaluation.labels["base"].rows == len(rows) and evaluation.headline["base"]["cases"] == len(rows)
    assert {r.stage for r in committed(run_of(config), "eval")} == {evaluation.labels["base"].stage}
    assert evaluation.report.endswith("/runs/test-run/reports/eval-synthetic.html") and os.path.isfile(evaluation.report)
    before = eval_commits(config)

    launch_data("run", config)

    assert eval_commits(config) == before


@pytest.mark.slow
def test_a_registered_adapter_is_evaluated_as_tuned_on_the_same_cases_on_local_ray(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=20, evaluation=WHOLE_SPLIT)
    launch_data("generate", config)
    update_manifest(run_of(config), extra={"training": {"adapter": "runs/test-run/training/adapter"}})

    # Shards on Ray workers, engines in Ray actors (the runner is not part of the run's identity).
    manifest = launch(config.model_copy(update={"runner": "ray"}), "synthetic", None, None, config.evaluation)

    labels = evaluations(manifest)["synthetic"].labels
    assert set(labels) == {"base", "tuned"} and labels["base"].stage != labels["tuned"].stage
    assert labels["tuned"].adapter == join(str(tmp_path / "data"), "runs/test-run/training/adapter")
    assert labels["base"].adapter is None and labels["tuned"].agent.endswith("+adapter")
    rows = current_rows(run_of(config))
    by_label = {label: sorted(r.case_id for r in rows if r.model_label == label) for label in labels}
    assert by_label["base"] == by_label["tuned"] == held_out_ids(config)
    assert "tuned_vs_base" in evaluations(manifest)["synthetic"].headline


def test_a_lost_shard_is_redone_alone(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=30, shard_size=2, evaluation=WHOLE_SPLIT)
    launch_data("generate", config)
    launch(config, "synthetic", None, None, config.evaluation)
    before = eval_commits(config)
    assert len(before) >= 2
    (stage, lost), *_ = sorted(before)
    fs, run_path = run_dir(run_of(config))
    fs.rm_file(join(run_path, "eval", "_commits", stage, f"{lost}.json"))

    launch(config, "synthetic", None, None, config.evaluation)

    after = eval_commits(config)
    assert after.keys() == before.keys()
    assert [key for key in after if after[key] != before[key]] == [(stage, lost)]


def test_other_settings_make_another_evaluation_and_the_manifest_points_at_the_latest(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=20, evaluation=WHOLE_SPLIT)
    launch_data("generate", config)
    first = evaluations(launch(config, "synthetic", None, None, config.evaluation))["synthetic"]
    second = evaluations(launch(config, "synthetic", None, None, EvalConfig(max_steps=1)))["synthetic"]

    assert first.labels["base"].stage != second.labels["base"].stage
    rows = current_rows(run_of(config))
    assert {r.id for r in rows} == {r.id for r in read_records(run_of(config), "eval", stages=[second.labels["base"].stage])}
    assert len(read_records(run_of(config), "eval")) == 2 * len(rows)


def test_a_judge_answering_garbage_leaves_every_row_a_judge_error(prefect_server, tmp_path):
    config = scripted_config(tmp_path / "data", scenarios=20, evaluation=WHOLE_SPLIT)
    launch_data("generate", config)
    judged_by_garbage = config.model_copy(
        update={"models": config.models.model_copy(update={"evaluator": ModelSpec(backend="scripted", model=GARBAGE_JUDGE)})}
    )

    manifest = launch(judged_by_garbage, "synthetic", None, None, config.evaluation)

    rows = current_rows(run_of(config))
    assert rows and all(r.judge_error and r.judge_error.startswith("safety judge: step 0: no JSON object") for r in rows)
    assert all(r.safe is None and r.safety_score is None and r.helpfulness is None for r in rows)
    evaluation = evaluations(manifest)["synthetic"]
    assert evaluation.labels["base"].judge_errors == len(rows)
    assert evaluation.headline["base"]["judge_errors"] == len(rows) and evaluation.headline["base"]["safe_rate"] is None
    assert read_manifest(run_of(config)).counters[f"{evaluation.labels['base'].stage}.judge_errors"] == len(rows)
