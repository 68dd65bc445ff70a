"""midtrain: pretrain, midtrain (resume with a new data mixture) and posttrain language models on litgpt."""

__version__ = "0.1.0"
