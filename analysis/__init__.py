"""Torch-free analysis: activation tables, selectivity measures, tables and figures.

Importing this package (or any of its modules) must never import torch
(docs/architecture.md).
"""
