"""The container images every component runs in: one constant, tied to the package version."""

from intermix_core import __version__

IMAGE_REPOSITORY = "ghcr.io/intermix-project/intermix"
# CPU image (preprocess, aggregate) and CUDA image (train fold, FGSM attack)
IMAGE_CPU = f"{IMAGE_REPOSITORY}:{__version__}-cpu"
IMAGE_GPU = f"{IMAGE_REPOSITORY}:{__version__}-cuda"
