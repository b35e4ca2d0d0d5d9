"""Fail the set-up loudly if the virtualenv holds a torch other than the pinned CPU build, or torchvision."""

import importlib.util
import sys

import torch

problems = []
if not torch.__version__.startswith("2.13.0"):
    problems.append(f"torch {torch.__version__} is installed; mmembed pins torch==2.13.0 (CPU)")
if torch.version.cuda is not None:
    problems.append(f"a CUDA build of torch is installed (CUDA {torch.version.cuda}); expected the CPU build")
if importlib.util.find_spec("torchvision") is not None:
    problems.append("torchvision is installed; it is CUDA-linked here and breaks imports: pip uninstall torchvision")
if problems:
    sys.exit("environment check failed:\n  " + "\n  ".join(problems))
print(f"environment ok: torch {torch.__version__}")
