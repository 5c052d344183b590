"""modelpilot: deploy MLflow registry models on Kubernetes and follow their aliases."""

__version__ = "0.1.0"
