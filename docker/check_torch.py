"""Run by docker/Dockerfile after installing torch: fails the build unless the installed torch
is the requested release (TORCH_VERSION) and build (TORCH_VARIANT: `cpu` or a CUDA tag)."""

import sys

import torch

variant, version = sys.argv[1], sys.argv[2]
release = torch.__version__.split("+")[0]
cuda = torch.version.cuda
if release != version:
    sys.exit(f"torch {torch.__version__} was installed, but TORCH_VERSION={version} was asked")
if (cuda is None) != (variant == "cpu"):
    sys.exit(f"torch {torch.__version__} (CUDA {cuda}) is not the {variant} build (TORCH_VARIANT)")
print(f"torch {torch.__version__}, CUDA {cuda}")
