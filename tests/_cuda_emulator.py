"""An ``xp`` that runs gpuknn's CUDA kernels on the CPU, for tests without a GPU.

:data:`EMULATED` behaves as numpy for every array function, and has the two pieces of
CuPy that :mod:`gpuknn.kernels` uses: ``RawModule`` and ``cuda.Device``. Its
``RawModule`` compiles a kernel's source with g++ and ``cuda_emulator.h`` (one OS thread
per CUDA thread, see that header) and launches it through ctypes.

Launches are checked more strictly than CuPy does: every argument must be a numpy
array whose dtype matches the kernel's pointer type, or a numpy scalar whose type
matches the kernel's scalar parameter. (CuPy passes a Python int as a 64-bit integer,
whatever the kernel expects.) Arrays must be C-contiguous.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

HEADER = Path(__file__).resolve().parent / "cuda_emulator.h"
COMPILER = shutil.which("g++")
# "thread": build the kernels with ThreadSanitizer (the process needs libtsan preloaded).
SANITIZE_VARIABLE = "GPUKNN_EMULATOR_SANITIZE"

# C parameter types of the kernels, and what a launch must pass for each.
POINTER_DTYPES = {"float": np.float32, "double": np.float64, "int": np.int32,
                  "long long": np.int64, "unsigned char": (np.bool_, np.uint8),
                  "unsigned int": np.uint32}
SCALAR_TYPES = {"int": (np.int32, ctypes.c_int32), "float": (np.float32, ctypes.c_float),
                "long long": (np.int64, ctypes.c_int64),
                "unsigned int": (np.uint32, ctypes.c_uint32)}
SIGNATURE = re.compile(r'extern "C" __global__ void (\w+)\s*\(([^)]*)\)')
DYNAMIC_SHARED = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")


class Parameter:
    """One kernel parameter: its C base type and whether it is a pointer."""

    def __init__(self, declaration: str):
        text = declaration.replace("__restrict__", "").replace("const", "")
        self.pointer = "*" in text
        words = text.replace("*", " ").split()
        self.name = words[-1]
        self.base = " ".join(words[:-1])

    def convert(self, value: Any) -> ctypes._SimpleCData:
        if self.pointer:
            wanted = POINTER_DTYPES[self.base]
            wanted = wanted if isinstance(wanted, tuple) else (wanted,)
            if not isinstance(value, np.ndarray) or value.dtype.type not in wanted:
                raise TypeError(f"{self.name}: a {self.base}* parameter needs a numpy array of "
                                f"{[w.__name__ for w in wanted]}, got {_describe(value)}")
            if not value.flags.c_contiguous:
                raise TypeError(f"{self.name}: the array is not C-contiguous")
            return ctypes.c_void_p(value.ctypes.data)
        numpy_type, c_type = SCALAR_TYPES[self.base]
        if type(value) is not numpy_type:
            raise TypeError(f"{self.name}: a {self.base} parameter needs {numpy_type.__name__}, "
                            f"got {_describe(value)}")
        return c_type(value.item())


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype}"
    return f"{type(value).__name__} {value!r}"


class EmulatedFunction:
    """A compiled kernel, launched as ``function(grid, block, args, shared_mem=0)``."""

    def __init__(self, library: ctypes.CDLL, name: str, parameters: list[Parameter]):
        self._launch = getattr(library, f"emulate_{name}")
        self._launch.restype = None
        self.name, self.parameters = name, parameters

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple,
                 shared_mem: int = 0) -> None:
        if len(args) != len(self.parameters):
            raise TypeError(f"{self.name} takes {len(self.parameters)} arguments, "
                            f"got {len(args)}")
        values = [p.convert(a) for p, a in zip(self.parameters, args, strict=True)]
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        self._launch(ctypes.c_uint(_single(grid)), ctypes.c_uint(_single(block)),
                     ctypes.c_size_t(shared_mem), pointers)


def _single(dims: tuple[int, ...]) -> int:
    if len(dims) != 1:
        raise ValueError(f"the emulator launches 1-D grids and blocks only, got {dims}")
    return int(dims[0])


class EmulatedRawModule:
    """``cupy.RawModule(code=..., options=...)``, compiled with g++ for the emulator."""

    def __init__(self, code: str, options: tuple[str, ...] = ()):
        self.options = options
        uncommented = re.sub(r"//[^\n]*", "", code)
        self.kernels = {name: [Parameter(p) for p in params.split(",")]
                        for name, params in SIGNATURE.findall(uncommented)}
        self.library = ctypes.CDLL(str(_compile(code, self.kernels)))

    def get_function(self, name: str) -> EmulatedFunction:
        return EmulatedFunction(self.library, name, self.kernels[name])


def _compile(code: str, kernels: dict[str, list[Parameter]]) -> Path:
    source = DYNAMIC_SHARED.sub(
        r"\1* \2 = reinterpret_cast<\1*>(emu::dynamic_shared.data());", code)
    for name, parameters in kernels.items():
        arguments = ", ".join(
            f"*reinterpret_cast<{p.base}{'*' if p.pointer else ''}"
            f"*>(args[{i}])" for i, p in enumerate(parameters))
        source += (f'\nextern "C" void emulate_{name}(unsigned int grid, unsigned int block, '
                   f"std::size_t shared, void** args)\n{{\n    emu::launch(grid, block, shared, "
                   f"[=] {{ {name}({arguments}); }});\n}}\n")
    sanitize = os.environ.get(SANITIZE_VARIABLE, "")
    flags = [f"-fsanitize={sanitize}"] if sanitize else []
    digest = hashlib.sha256((source + HEADER.read_text() + sanitize).encode()).hexdigest()[:16]
    build = Path(tempfile.gettempdir()) / "gpuknn-cuda-emulator"
    library = build / f"kernel-{digest}.so"
    if not library.exists():
        build.mkdir(parents=True, exist_ok=True)
        cpp = build / f"kernel-{digest}.cpp"
        cpp.write_text(source)
        partial = library.with_suffix(".partial.so")
        # -Wno-sign-compare: `int < blockDim.x` is the usual CUDA idiom (unsigned on both).
        command = [COMPILER, "-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-Wall",
                   "-Werror", "-Wno-sign-compare", *flags, "-include", str(HEADER), "-o",
                   str(partial), str(cpp)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"g++ could not build the emulated kernel {cpp}:\n"
                               f"{result.stderr[-4000:]}")
        partial.rename(library)
    return library


class _EmulatedCupy:
    """numpy, plus CuPy's ``RawModule`` and ``cuda.Device`` for gpuknn.kernels."""

    RawModule = EmulatedRawModule
    cuda = SimpleNamespace(Device=lambda: SimpleNamespace(id=0))

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def __repr__(self) -> str:
        return "<numpy with emulated CUDA kernels>"


EMULATED = _EmulatedCupy()
