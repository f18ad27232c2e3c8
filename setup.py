"""The one native module: the whole-body run matcher (``buffered_stream.core._runs``).

It is optional: where no C compiler is found, the install goes on and the service uses the same
matcher in pure Python (slower, same answers).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "buffered_stream.core._runs",
            ["filter/buffered_stream/core/_runs.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
