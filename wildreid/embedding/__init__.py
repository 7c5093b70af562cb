"""From images to L2-normalised embeddings: loading annotated crops, decoding dataset rows into batches,
loading a model (wildreid or timm) and the one embedding loop used by training, evaluation and galleries."""
from .data import ReIDImageDataset, collate, undecoded
from .embedders import LoadedEmbedder, load_embedder, load_wildreid_model
from .images import LoadFailure, iter_crops
from .loop import Embeddings, embed_dataset

__all__ = ["Embeddings", "LoadFailure", "LoadedEmbedder", "ReIDImageDataset", "collate", "embed_dataset",
           "iter_crops", "load_embedder", "load_wildreid_model", "undecoded"]
