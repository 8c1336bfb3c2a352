"""Answering predictions: one context or many (`prediction`, `multi_prediction`), concurrent
requests batched into one forward pass (`batcher`), and new weights followed in API processes
(`model_follower`)."""
