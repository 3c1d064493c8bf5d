"""TREK-150 evaluation: dataset, protocols, runner, metrics, reports, submission."""
