"""Galleries of known individuals and "which one is this, or a new one?": the model tag of an embedding
space, the gallery store, faiss search, the new-individual threshold, result writers, and the `wildreid`
command's workflows (index, calibrate, identify)."""
from .gallery import Gallery
from .model_tag import ModelMismatchError, ModelTag, preprocessing_signature, weights_content_hash
from .store import GalleryBusyError
from .results import CandidateIndividual, IdentificationResult, write_results, write_results_csv, write_results_json
from .workflows import build_gallery, calibrate_gallery, identify

__all__ = ["CandidateIndividual", "Gallery", "GalleryBusyError", "IdentificationResult", "ModelMismatchError", "ModelTag",
           "build_gallery", "calibrate_gallery", "identify", "preprocessing_signature", "weights_content_hash",
           "write_results", "write_results_csv", "write_results_json"]
