"""A fake `pynvml` for nodes without GPUs.

Put this directory first on PYTHONPATH (or sys.path) and `import pynvml` gets
fake GPUs shaped like the real module's answers: names as str, UUIDs as bytes
(as the real pynvml returns them), memory info with .total/.free/.used in
bytes, utilisation with .gpu/.memory in %, temperature in °C, power in mW, and
`NVMLError` subclasses built from error codes.

Environment knobs, read at `nvmlInit()`:

    FAKE_NVML_GPUS=N            number of GPUs (default 2; 0 is allowed)
    FAKE_NVML_FAIL_INIT=1       nvmlInit raises NVMLError_DriverNotLoaded
    FAKE_NVML_BROKEN_GPUS=1,3   every query on these GPUs raises NVMLError_GpuIsLost
    FAKE_NVML_MEMORY=BYTES      total memory per GPU (default 80 GiB)
"""

from __future__ import annotations

import os
import threading

FAKE = True

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml's: `NVMLError(code)` returns the subclass for that code."""

    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value=None):
        super().__init__(getattr(self, "value", value))

    def __str__(self):
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return isinstance(other, NVMLError) and self.value == other.value

    def __hash__(self):
        return hash(self.value)


def _subclass(name: str, code: int) -> type:
    def new(cls, *args):
        return NVMLError.__new__(cls, code)

    klass = type(name, (NVMLError,), {"__new__": new})
    NVMLError._valClassMapping[code] = klass
    return klass


NVMLError_Uninitialized = _subclass("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _subclass("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _subclass("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_DriverNotLoaded = _subclass("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_GpuIsLost = _subclass("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _subclass("NVMLError_Unknown", NVML_ERROR_UNKNOWN)


class c_nvmlMemory_t:
    def __init__(self, total: int, used: int):
        self.total = total
        self.used = used
        self.free = total - used

    def __repr__(self):
        return f"c_nvmlMemory_t(total: {self.total} B, free: {self.free} B, used: {self.used} B)"


class c_nvmlUtilization_t:
    def __init__(self, gpu: int, memory: int):
        self.gpu = gpu
        self.memory = memory

    def __repr__(self):
        return f"c_nvmlUtilization_t(gpu: {self.gpu} %, memory: {self.memory} %)"


class c_nvmlDevice_t:
    """An opaque device handle, as the real module hands out."""

    def __init__(self, index: int):
        self._index = index

    def __repr__(self):
        return f"<fake nvmlDevice {self._index}>"


_lock = threading.Lock()
_refcount = 0
_count = 0
_broken: frozenset[int] = frozenset()
_memory = 80 << 30


def nvmlErrorString(result):
    return _MESSAGES.get(result, "Unknown Error")


def nvmlInit():
    global _refcount, _count, _broken, _memory
    if os.environ.get("FAKE_NVML_FAIL_INIT", "") not in ("", "0"):
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    with _lock:
        _count = int(os.environ.get("FAKE_NVML_GPUS", "2"))
        _broken = frozenset(int(x) for x in os.environ.get("FAKE_NVML_BROKEN_GPUS", "").split(",") if x.strip())
        _memory = int(os.environ.get("FAKE_NVML_MEMORY", str(80 << 30)))
        _refcount += 1


def nvmlInitWithFlags(flags):
    nvmlInit()


def nvmlShutdown():
    global _refcount
    with _lock:
        if _refcount == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        _refcount -= 1


def _check_init():
    if _refcount == 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _device(handle) -> int:
    _check_init()
    if not isinstance(handle, c_nvmlDevice_t) or not 0 <= handle._index < _count:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    if handle._index in _broken:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    return handle._index


def nvmlSystemGetDriverVersion():
    _check_init()
    return "550.00.fake"


def nvmlDeviceGetCount():
    _check_init()
    return _count


def nvmlDeviceGetHandleByIndex(index):
    _check_init()
    if not 0 <= int(index) < _count:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return c_nvmlDevice_t(int(index))


def nvmlDeviceGetName(handle):
    _device(handle)
    return "NVIDIA Fake GPU 80GB"


def nvmlDeviceGetUUID(handle):
    i = _device(handle)
    return f"GPU-fa4e0000-0000-0000-0000-{i:012d}".encode()


def nvmlDeviceGetMemoryInfo(handle, version=None):
    i = _device(handle)
    return c_nvmlMemory_t(total=_memory, used=(i + 1) * (1 << 30))


def nvmlDeviceGetUtilizationRates(handle):
    i = _device(handle)
    return c_nvmlUtilization_t(gpu=(10 * i) % 101, memory=(5 * i) % 101)


def nvmlDeviceGetTemperature(handle, sensor):
    i = _device(handle)
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return 40 + i


def nvmlDeviceGetPowerUsage(handle):
    i = _device(handle)
    return 75_000 + 1_000 * i  # milliwatts
