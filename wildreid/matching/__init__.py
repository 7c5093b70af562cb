"""How two images, or a query and a gallery, get a score: keypoint extraction, the descriptor cache,
pairwise local matching, score calibration and global + local fusion."""
from .calibration import Calibrator, similarity_pairs
from .descriptor_cache import LocalFeatureCache
from .keypoints import LocalFeatureExtractor, LocalFeatures
from .local_matcher import LocalMatcher

__all__ = ["Calibrator", "LocalFeatureCache", "LocalFeatureExtractor", "LocalFeatures", "LocalMatcher",
           "similarity_pairs"]
