# Makes conf/ the package cnnbench.conf inside the wheel (pyproject): Hydra reads packaged configs only from a package.
