"""The e2e benchmark's CPU budget line: per-event figures and the capacity they imply."""

from pipeline.bench.e2e import cpu_budget


def test_budget_splits_pipeline_from_load_generator() -> None:
    cpu = {"sink": 20.0, "worker w0": 20.0, "bridge": 8.0, "kafka": 10.0, "load generator": 2.0}
    line = cpu_budget(cpu, 1_000_000, 2)
    # 58 us of pipeline + 2 us of load generator per event: 2 cores carry 2 / 60e-6 and 2 / 58e-6 events/s
    assert "pipeline 58.0 us (sink 20.0, worker w0 20.0, bridge 8.0, kafka 10.0)" in line
    assert "load generator 2.0 us" in line
    assert "~33,333 events/s with the load generator" in line
    assert "~34,483 without it" in line
    assert "0.58 cores per 10k events/s; a floor unless the run saturated the machine" in line


def test_budget_without_events() -> None:
    assert cpu_budget({"sink": 1.0}, 0, 2) == "e2e: CPU per event: no events"


def test_budget_without_cpu_readings() -> None:
    assert cpu_budget({"sink": 0.0, "load generator": 0.0}, 1000, 2) == "e2e: CPU per event: not measured"
