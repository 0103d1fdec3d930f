"""GpuProbe with the fake NVML, a failing NVML and no NVML at all."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from hakuriver.models import GpuInfo
from hakuriver.runner.gpu import GpuProbe

FAKE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fakes", "nvml")


@pytest.fixture
def fake_nvml(monkeypatch):
    """Make `import pynvml` find tests/fakes/nvml/pynvml.py; restore everything after."""
    saved_path = list(sys.path)
    saved_module = sys.modules.pop("pynvml", None)
    sys.path.insert(0, FAKE_DIR)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("pynvml", None)
        if saved_module is not None:
            sys.modules["pynvml"] = saved_module


def test_two_fake_gpus(fake_nvml, monkeypatch):
    monkeypatch.delenv("FAKE_NVML_GPUS", raising=False)
    probe = GpuProbe()
    gpus = probe.list_gpus()
    assert [g.index for g in gpus] == [0, 1]
    assert all(isinstance(g, GpuInfo) for g in gpus)
    assert gpus[0].name == "NVIDIA Fake GPU 80GB"
    assert gpus[1].uuid == "GPU-fa4e0000-0000-0000-0000-000000000001"
    assert gpus[0].memory_total == 80 << 30
    stats = probe.stats()
    assert stats[1] == {
        "index": 1,
        "utilization": 10,
        "memory_used": 2 << 30,
        "memory_total": 80 << 30,
        "temperature": 41,
        "power_watts": 76.0,
    }
    import pynvml

    assert getattr(pynvml, "FAKE", False) is True
    probe.close()


def test_gpu_count_from_env(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_GPUS", "4")
    assert len(GpuProbe().list_gpus()) == 4


def test_zero_gpus(fake_nvml, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_NVML_GPUS", "0")
    probe = GpuProbe()
    with caplog.at_level(logging.INFO, logger="hakuriver.runner.gpu"):
        assert probe.list_gpus() == []
        assert probe.stats() == []
    assert len(caplog.records) == 1


def test_broken_gpu_gives_none_fields(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_BROKEN_GPUS", "0")
    probe = GpuProbe()
    stats = probe.stats()
    assert stats[0] == {
        "index": 0,
        "utilization": None,
        "memory_used": None,
        "memory_total": None,
        "temperature": None,
        "power_watts": None,
    }
    assert stats[1]["temperature"] == 41
    assert probe.list_gpus()[0] == GpuInfo(index=0)


def test_init_error_gives_no_gpus_and_one_log_line(fake_nvml, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_NVML_FAIL_INIT", "1")
    probe = GpuProbe()
    with caplog.at_level(logging.INFO, logger="hakuriver.runner.gpu"):
        assert probe.list_gpus() == []
        assert probe.stats() == []
        assert probe.list_gpus() == []
    assert len(caplog.records) == 1
    assert "Driver Not Loaded" in caplog.records[0].getMessage()


def test_no_pynvml_module(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    probe = GpuProbe()
    with caplog.at_level(logging.INFO, logger="hakuriver.runner.gpu"):
        assert probe.list_gpus() == []
        assert probe.stats() == []
    assert len(caplog.records) == 1
    assert "not installed" in caplog.records[0].getMessage()


def test_real_pynvml_without_a_gpu_is_quiet():
    # Whatever this machine has (the real pynvml without a driver, or nothing), no exception.
    probe = GpuProbe()
    assert isinstance(probe.list_gpus(), list)
    assert isinstance(probe.stats(), list)


def test_fake_on_pythonpath_of_a_subprocess():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([FAKE_DIR, os.getcwd()]), FAKE_NVML_GPUS="2")
    code = "from hakuriver.runner.gpu import GpuProbe; print(len(GpuProbe().list_gpus()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


def test_fake_errors_look_like_pynvml(fake_nvml):
    import pynvml

    err = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    assert isinstance(err, pynvml.NVMLError_GpuIsLost)
    assert str(err) == "GPU is lost"
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
