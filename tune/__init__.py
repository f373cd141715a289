"""Ray Tune sweeps over the CoDiEmb knobs (``python -m tune.sweep``): the search space, the per-trial
driver function that builds the TorchTrainer, the MLflow callback, and the sweep report."""
