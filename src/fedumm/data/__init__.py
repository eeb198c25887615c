"""Data: sources, partitions, modality heterogeneity and the federated view.

Modules (imported individually; ``fedumm.data.config`` imports the sources, never the federated view):

- ``config``: the ``data`` config sections (one per registered source, partition, modality);
- ``sources``: the source registry and one module per source (synthetic, hf, llava_json, client_files,
  table), each holding its config section and its load function;
- ``rows``: the sample schema and the row/image helpers the sources share;
- ``synthetic``: the built-in synthetic VQA task (VQAv2 schema);
- ``partition``: IID, Dirichlet, shards, quantity-skew and natural partitions, statistics, heatmap;
- ``modality``: FedMLLM-style missing/single/mix modality scenarios;
- ``federated``: loading + partition + modality + local splits -> ``FederatedData``.
"""
