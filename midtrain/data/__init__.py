"""Data: shard discovery (``shards``), mixture weights (``mixture``), the run's plan (``plan``) and the
``ShardedMixedDataset`` DataModule. The pure modules never import torch, so this package imports the
DataModule lazily."""

__all__ = ["ShardedMixedDataset"]


def __getattr__(name: str):
    if name == "ShardedMixedDataset":
        from midtrain.data.sharded_mixed import ShardedMixedDataset

        return ShardedMixedDataset
    raise AttributeError(name)
