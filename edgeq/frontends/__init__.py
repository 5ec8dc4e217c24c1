"""Model formats other than Keras, each into the pipeline's LoadedModel interface."""
