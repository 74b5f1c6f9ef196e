"""The gpu tier of every distillation chapter runs end to end on this CPU in a dry run (one
training step per job, one batch per evaluation), so a GPU session spends its time training,
not debugging. Needs the real data set (the gpu tier uses all of CIFAR-100)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.papers import all_specs

from conftest import real_data_available

ROOT = Path(__file__).resolve().parent.parent
FAMILY = [s for s in all_specs() if s.info.get("protocol") == "distillation"]


@pytest.mark.slow
@pytest.mark.skipif(not real_data_available(), reason="needs the real CIFAR-100")
@pytest.mark.parametrize("spec", FAMILY, ids=lambda s: s.name)
def test_gpu_tier_dry_run(spec, tmp_path, monkeypatch):
    import papermill as pm

    for k, v in {"REPRO_DRY_RUN": "1", "REPRO_RUNS": tmp_path / "runs", "REPRO_CHECKPOINTS": tmp_path / "ckpt",
                 "REPRO_TEACHERS": tmp_path / "teachers", "REPRO_ARTIFACTS": tmp_path / "artifacts"}.items():
        monkeypatch.setenv(k, str(v))
    pm.execute_notebook(str(ROOT / "notebooks" / f"{spec.name}.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={"tier": "gpu", "seeds": [0]}, cwd=str(ROOT / "notebooks"),
                        progress_bar=False, kernel_name="python3")
    found = list((tmp_path / "runs").glob(f"{spec.name}.gpu.*/{spec.name}.gpu.json"))
    assert len(found) == 1, found
    rec = json.loads(found[0].read_text())
    assert rec["status"] == "dry-run" and rec["params"]["student"] == spec.resolve("gpu")["student"]
    assert not list((tmp_path / "teachers").glob("*/teacher.json")), "a dry-run teacher was stored"
    assert not list((tmp_path / "artifacts").glob("*/*/artifact.json")), "a dry-run artifact was stored"
