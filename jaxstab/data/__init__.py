"""Data: the GLUE task table, the readers of GLUE files and of the user's own files,
tokenization and its cache, batching on the device, the offline demo task and the metrics.
Uses config and infra."""
