"""Builds the C library (ssaproxy/c/libssaproxy.so) with the system C compiler; everything
else about the package is in pyproject.toml.  The library is an ordinary shared object that
programs link with (or preload), not a Python extension module, so it keeps its plain name."""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_DIR = os.path.join("ssaproxy", "c")
C_SOURCES = ["wire.c", "table.c", "options.c", "connect.c", "listen.c", "interpose.c", "redirect.c", "pem.c"]
LIBRARY = "ssaproxy.c.libssaproxy"
FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-O2", "-fPIC"]


class BuildCLibrary(build_ext):
    """build_ext that makes exactly `ssaproxy/c/libssaproxy.so` (no Python ABI tag)."""

    def get_ext_filename(self, fullname: str) -> str:
        if fullname.endswith("libssaproxy"):
            return os.path.join(*fullname.split(".")[:-1], "libssaproxy.so") if "." in fullname else "libssaproxy.so"
        return str(super().get_ext_filename(fullname))

    def build_extension(self, ext: Extension) -> None:
        if ext.name != LIBRARY:
            super().build_extension(ext)
            return
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        objects = self.compiler.compile(ext.sources, output_dir=self.build_temp, extra_postargs=FLAGS,
                                        depends=ext.depends)
        self.compiler.link_shared_object(objects, target, libraries=["dl", "pthread"],
                                         extra_postargs=["-Wl,-soname,libssaproxy.so", "-Wl,-z,now"])


setup(
    ext_modules=[Extension(LIBRARY, sources=[os.path.join(C_DIR, name) for name in C_SOURCES],
                           depends=[os.path.join(C_DIR, "internal.h"), os.path.join(C_DIR, "include", "in_tls.h"),
                                    os.path.join(C_DIR, "include", "ssaproxy.h")])],
    cmdclass={"build_ext": BuildCLibrary},
)
