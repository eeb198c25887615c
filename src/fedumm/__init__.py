"""fedumm: federated fine-tuning of vision-language and unified multimodal models."""

__version__ = "0.1.0"
