"""Package lists under the names rlms' ``rlm.environments.constants`` exports.

rlms builds its Modal, Prime and Daytona images with these system and Python
packages. Our sandboxes start the standard-library worker on a plain Python
image and install nothing, so these lists are not used by default; they are
here for code that imports them, for example to build a richer image::

    import modal
    from rlm.environments.constants import APT_PACKAGES, PIP_PACKAGES

    image = modal.Image.debian_slim(python_version="3.11").apt_install(
        *APT_PACKAGES
    ).pip_install(*PIP_PACKAGES)
    RLM(..., environment="modal", environment_kwargs={"image": image})
"""

from __future__ import annotations

#: Debian packages (compilers, git, download tools, BLAS/LAPACK).
APT_PACKAGES: list[str] = [
    "build-essential",
    "git",
    "curl",
    "wget",
    "libopenblas-dev",
    "liblapack-dev",
]

#: Python packages with minimum versions (numerics, symbolic maths, HTTP, formats,
#: utilities, and dill for state serialisation).
PIP_PACKAGES: list[str] = [
    "numpy>=1.26.0",
    "pandas>=2.1.0",
    "scipy>=1.11.0",
    "sympy>=1.12",
    "requests>=2.31.0",
    "httpx>=0.25.0",
    "flask>=3.0.0",
    "pyyaml>=6.0",
    "toml>=0.10.2",
    "tqdm>=4.66.0",
    "python-dateutil>=2.8.2",
    "regex>=2023.0.0",
    "dill>=0.3.7",
]

__all__ = ["APT_PACKAGES", "PIP_PACKAGES"]
