"""Data: sources, partitions, modality heterogeneity and the federated view.

Modules (imported individually, so that ``fedumm.config`` stays cheap to import):

- ``config``: the ``data`` config sections (sources, partition, modality);
- ``synthetic``: the built-in synthetic VQA task (VQAv2 schema);
- ``loaders``: Hugging Face VQAv2-schema datasets, LLaVA JSON, client files, JSONL/CSV tables;
- ``partition``: IID, Dirichlet, shards, quantity-skew and natural partitions, statistics, heatmap;
- ``modality``: FedMLLM-style missing/single/mix modality scenarios;
- ``federated``: loading + partition + modality + local splits -> ``FederatedData``.
"""
