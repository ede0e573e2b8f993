"""Typed job specs and job files: round trips, and errors that name the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.errors import InvalidSpecError
from orchestrator.spec import JobSpec, Placement, PriorityClass, Resources, load_job_file
from orchestrator.validation import normalize_spec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_round_trip_through_the_wire_form() -> None:
    spec = JobSpec(
        name="train",
        tenant="uio",
        command=["python", "train.py", "--epochs", "3"],
        queue="gpu",
        priority=PriorityClass.CRITICAL,
        env={"A": "1"},
        resources=Resources(gpus=8, gpu_type="H100", cpus=32, memory_mb=4096, nodes=2),
        placement=Placement(allowed_jurisdictions=("NO",), excluded_sites=("abilene",)),
        image="ghcr.io/uio/train:1",
        max_runtime_seconds=3600,
        max_attempts=3,
        labels={"team": "nlp"},
        client_request_id="req-1",
    )
    pb = spec.to_proto()
    assert pb.priority == types_pb2.PRIORITY_CLASS_CRITICAL
    assert normalize_spec(pb) == pb  # already normal: nothing to fill in
    assert JobSpec.from_proto(pb) == spec
    assert isinstance(spec.command, tuple)
    with pytest.raises(TypeError):
        spec.env["B"] = "2"  # type: ignore[index]
    assert hash(spec) == hash(JobSpec.from_proto(pb))


@given(st.sampled_from(list(PriorityClass)))
def test_priority_classes_map_to_the_wire_enum(priority: PriorityClass) -> None:
    assert PriorityClass.from_proto(priority.to_proto()) is priority
    assert PriorityClass.parse(priority.value.upper()) is priority


def test_unspecified_priority_is_normal_and_defaults_match_the_server() -> None:
    spec = JobSpec.from_proto(types_pb2.JobSpec(name="a", tenant="t", command=["x"]))
    assert spec.priority is PriorityClass.NORMAL
    assert (spec.queue, spec.max_attempts) == ("default", 1)
    assert spec.resources == Resources()


def test_a_string_command_is_rejected_with_a_hint() -> None:
    with pytest.raises(InvalidSpecError) as err:
        JobSpec(name="a", tenant="t", command="python train.py")  # type: ignore[arg-type]
    assert err.value.field == "command"
    assert "use a list like [python, train.py]" in err.value.problem
    with pytest.raises(InvalidSpecError) as err:
        JobSpec.from_dict({"name": "a", "tenant": "t", "command": "sleep 5"})
    assert "list" in err.value.problem


def test_from_dict_names_unknown_keys_and_bad_values() -> None:
    base = {"name": "a", "tenant": "t", "command": ["sleep", 5]}
    assert JobSpec.from_dict(base).command == ("sleep", "5")
    cases = [
        ({"gpus": 1}, "gpus"),
        ({"resources": {"gpu": 1}}, "resources.gpu"),
        ({"resources": {"gpus": -1}}, "resources.gpus"),
        ({"resources": {"gpus": "two"}}, "resources.gpus"),
        ({"placement": {"allowed_jurisdictions": "NO"}}, "placement.allowed_jurisdictions"),
        ({"priority": "urgent"}, "priority"),
        ({"env": ["A=1"]}, "env"),
        ({"max_attempts": True}, "max_attempts"),
    ]
    for extra, field in cases:
        with pytest.raises(InvalidSpecError) as err:
            JobSpec.from_dict({**base, **extra}, path="jobs[2]")
        assert err.value.field == f"jobs[2].{field}", extra
    with pytest.raises(InvalidSpecError) as err:
        JobSpec.from_dict({"name": "a", "command": ["x"]})
    assert (err.value.field, err.value.problem) == ("tenant", "is required")


def test_job_file_with_one_job(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: residency
        tenant: uio
        command: [python, -c, "print('hi')"]
        env: {DEBUG: true, THREADS: 4}
        placement: {allowed_jurisdictions: [NO, SE]}
        """,
    )
    [spec] = load_job_file(path)
    assert spec.placement.allowed_jurisdictions == ("NO", "SE")  # NO is Norway, not false
    assert dict(spec.env) == {"DEBUG": "true", "THREADS": "4"}


def test_job_file_with_jobs_and_count(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        jobs:
          - name: sweep
            tenant: acme
            command: [python, sweep.py]
            count: 3
            client_request_id: sweep-7
          - name: single
            tenant: acme
            command: ["true"]
        """,
    )
    specs = load_job_file(path)
    assert [s.name for s in specs] == ["sweep-0", "sweep-1", "sweep-2", "single"]
    assert [s.client_request_id for s in specs] == ["sweep-7-0", "sweep-7-1", "sweep-7-2", ""]


def test_the_demo_job_file_loads() -> None:
    demo = REPO / "examples" / "demo-jobs.yaml"
    if not demo.exists():
        pytest.skip("no examples/demo-jobs.yaml")
    specs = load_job_file(demo)
    assert len(specs) == len({s.name for s in specs}) > 1


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("jobs:\n  - name: a\n    tenant: t\n    command: [x]\n    colour: red\n",
         "jobs[0].colour", "unknown key"),
        ("jobs:\n  - {name: a, tenant: t, command: [x]}\n  - {name: b, tenant: t, command: [x],"
         " resources: {gpus: 1000}}\n", "jobs[1].resources.gpus", "at most"),
        ("name: a\ntenant: t\ncommand: [x]\nplacement: {allowed_jurisdictions: [Norway]}\n",
         "placement.allowed_jurisdictions[0]", "ISO 3166-1"),
        ("jobs:\n  - {name: a, tenant: t, command: [x], count: 0}\n", "jobs[0].count", "from 1"),
        ("jobs: []\n", "jobs", "non-empty"),
        ("jobs: [{name: a, tenant: t, command: [x]}]\nextra: 1\n", "extra", "unknown key"),
        ("name: [unclosed\n", "file", "not valid YAML at line"),
        ("", "file", "is empty"),
    ],
)  # fmt: skip
def test_job_file_errors_name_the_field_and_file(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidSpecError) as err:
        load_job_file(path)
    assert err.value.field == field
    assert problem in err.value.problem
    assert str(path) in err.value.problem


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match="cannot read"):
        load_job_file(tmp_path / "nope.yaml")
