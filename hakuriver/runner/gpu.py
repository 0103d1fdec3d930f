"""GPU discovery and stats through NVML: the only module that imports it.

A node without the `pynvml` module, without the NVIDIA driver, or without GPUs
is normal: the probe then reports no GPUs and says so once in the log, never
raising. Per-call failures on one GPU (a lost GPU, a query the card does not
support) give `None` for that value only.

Methods are synchronous (NVML blocks); the runner calls them via a thread.
"""

from __future__ import annotations

import importlib
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ..models import GpuInfo

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    # pynvml returns str for names but bytes for UUIDs (depending on its version).
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class GpuProbe:
    """Lazily initialised NVML view of this node's GPUs."""

    def __init__(self, module_name: str = "pynvml"):
        self._module_name = module_name
        self._lock = threading.Lock()
        self._tried = False
        self._nvml: Any = None
        self._handles: list[Any] = []

    # -- setup ----------------------------------------------------------
    def _ensure(self) -> bool:
        with self._lock:
            if not self._tried:
                self._tried = True
                self._init()
            return bool(self._handles)

    def _init(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pynvml's deprecation FutureWarning
                nvml = importlib.import_module(self._module_name)
        except ImportError:
            log.info("no GPUs: the %s module is not installed", self._module_name)
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError, or OSError from a broken driver
            log.info("no GPUs: NVML did not initialise (%s)", exc)
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # noqa: BLE001
            log.warning("no GPUs: NVML could not enumerate devices (%s)", exc)
            self._shutdown(nvml)
            return
        if not handles:
            log.info("no GPUs: NVML reports zero devices")
            self._shutdown(nvml)
            return
        self._nvml, self._handles = nvml, handles
        log.info("NVML: %d GPU(s)", len(handles))

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110
            pass

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                self._shutdown(self._nvml)
            self._nvml, self._handles = None, []

    @property
    def available(self) -> bool:
        return self._ensure()

    # -- queries --------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - one failing query must not hide the rest
            log.debug("NVML %s failed: %s", getattr(fn, "__name__", fn), exc)
            return None

    def list_gpus(self) -> list[GpuInfo]:
        if not self._ensure():
            return []
        nvml = self._nvml
        gpus = []
        for index, handle in enumerate(self._handles):
            name = self._call(nvml.nvmlDeviceGetName, handle)
            uuid = self._call(nvml.nvmlDeviceGetUUID, handle)
            mem = self._call(nvml.nvmlDeviceGetMemoryInfo, handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(name) if name is not None else "",
                    uuid=_text(uuid) if uuid is not None else "",
                    memory_total=int(mem.total) if mem is not None else 0,
                )
            )
        return gpus

    def stats(self) -> list[dict[str, Any]]:
        """Per GPU: index, utilization (%), memory_used, memory_total (bytes),
        temperature (°C), power_watts; None for any value NVML would not give."""
        if not self._ensure():
            return []
        nvml = self._nvml
        out = []
        for index, handle in enumerate(self._handles):
            util = self._call(nvml.nvmlDeviceGetUtilizationRates, handle)
            mem = self._call(nvml.nvmlDeviceGetMemoryInfo, handle)
            temp = self._call(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            power_mw = self._call(nvml.nvmlDeviceGetPowerUsage, handle)
            out.append(
                {
                    "index": index,
                    "utilization": int(util.gpu) if util is not None else None,
                    "memory_used": int(mem.used) if mem is not None else None,
                    "memory_total": int(mem.total) if mem is not None else None,
                    "temperature": int(temp) if temp is not None else None,
                    "power_watts": round(power_mw / 1000.0, 1) if power_mw is not None else None,
                }
            )
        return out
