"""Kubeflow pipelines that arrange the components: the grid (one run per dataset x setup) and a one-fold rerun."""
