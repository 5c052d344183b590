"""modelpilot_serve: the scoring server every ModelDeployment runs (MLflow protocol + OIP v2)."""

__version__ = "0.1.0"
