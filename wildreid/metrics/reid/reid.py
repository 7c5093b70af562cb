"""Animal re-identification metric: CMC top-k, mAP and open-set BAKS / BAUS / AUROC.

A thin `evaluate` wrapper: every number comes from ``wildreid.evaluation`` (one
implementation), so the `wildreid` package must be importable where this module is loaded.
"""
import datasets
import evaluate  # loaded by evaluate.load itself, so this is always the Hugging Face library

from wildreid.evaluation import (
    DEFAULT_TOPK,
    open_set_metrics,
    retrieval_metrics,
    retrieval_metrics_from_similarity,
    top1_matches,
    top1_matches_from_similarity,
)

_DESCRIPTION = """
Re-identification retrieval metrics. Each query is ranked against a gallery by similarity (cosine
of L2-normalised embeddings, or a precomputed score matrix) and scored by whether images of its own
identity come first: CMC top-k accuracy and mean average precision. Without a gallery every query is
ranked against all other queries (leave-one-out, as MiewID evaluates); identities with a single image
are skipped. Ties are resolved pessimistically (a correct item tied with incorrect ones ranks after
them). Given a "new individual" threshold, open-set scores are added: BAKS and BAUS (balanced accuracy
on known and unknown individuals, as in wildlife-datasets and AnimalCLEF), their geometric mean, and
the AUROC of the new-individual decision. Requires the `wildreid` package.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: config "default": one embedding (list of floats) per query;
        config "similarity": one row of the (queries x gallery) score matrix per query.
    references: identity label (str or int) per query.
    gallery_embeddings: config "default" only; (G, D) embeddings, or None for leave-one-out.
    gallery_labels: identity label per gallery item; needed with a gallery and in config "similarity"
        unless leave_one_out=True.
    leave_one_out: config "similarity" only; the matrix is square over the query set.
    topk: ranks to report as top{k}, default (1, 5, 10, 20).
    chunk_size: queries scored at once (None: automatic, bounded memory).
    new_individual_threshold: if given (chosen on a validation split!), add open-set scores; needs a gallery.
Returns:
    top1, top5, top10, top20, map (fractions in [0, 1]), cmc (list), n_queries, n_identities, n_skipped,
    n_unmatched, n_gallery; with a threshold also baks, baus, baks_baus_gmean, auroc_new, threshold,
    n_known_queries, n_unknown_queries, n_known_identities, n_unknown_identities.
Examples:
    >>> from wildreid.evaluation.hf_evaluate import load_reid_metric
    >>> reid = load_reid_metric()
    >>> reid.compute(predictions=[[1, 0], [0.9, 0.1], [0, 1]], references=["a", "a", "b"],
    ...              gallery_embeddings=[[1, 0], [0, 1]], gallery_labels=["a", "b"], topk=[1])["top1"]
    1.0
"""

_CITATION = """
@article{otarashvili2024multispecies,
  title={Multispecies Animal Re-ID Using a Large Community-Curated Dataset},
  author={Otarashvili, Lasha and Subramanian, Tamilselvan and Holmberg, Jason and Levenson, J. J.
          and Stewart, Charles V.},
  journal={arXiv preprint arXiv:2412.05602},
  year={2024}
}
"""


# Labels may be strings or integers; evaluate picks the option the first example fits.
_FEATURES = [
    datasets.Features(
        {"predictions": datasets.List(datasets.Value("float32")), "references": datasets.Value(label_type)}
    )
    for label_type in ("string", "int64")
]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Reid(evaluate.Metric):
    """Re-identification metric over embeddings (config "default") or similarity rows ("similarity")."""

    def _info(self):
        if self.config_name not in ("default", "similarity"):
            raise ValueError(f"unknown config {self.config_name!r}; choose 'default' (embeddings) or 'similarity'")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=[
                "https://github.com/WildlifeDatasets/wildlife-datasets",
                "https://arxiv.org/abs/2412.05602",
            ],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of queries; an empty batch is an error (evaluate would raise a bare IndexError)."""
        # evaluate.EvaluationModule.__init__ appends the inputs description to this docstring.
        if predictions is not None and len(predictions) == 0:
            raise ValueError("empty batch: predictions holds no queries, there is nothing to evaluate")
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        gallery_embeddings=None,
        gallery_labels=None,
        leave_one_out=False,
        topk=DEFAULT_TOPK,
        chunk_size=None,
        new_individual_threshold=None,
    ):
        if self.config_name == "similarity":
            results = retrieval_metrics_from_similarity(
                predictions, references, gallery_labels, leave_one_out=leave_one_out, topk=topk, chunk_size=chunk_size
            )
        else:
            if leave_one_out:
                raise ValueError(
                    "config 'default' does leave-one-out when gallery_embeddings is None; drop leave_one_out"
                )
            results = retrieval_metrics(
                predictions, references, gallery_embeddings, gallery_labels, topk=topk, chunk_size=chunk_size
            )
        if new_individual_threshold is not None:
            if gallery_labels is None or leave_one_out:
                raise ValueError("open-set scores need a separate gallery (gallery_labels)")
            if self.config_name == "similarity":
                matches = top1_matches_from_similarity(predictions, references, gallery_labels, chunk_size=chunk_size)
            else:
                matches = top1_matches(
                    predictions, references, gallery_embeddings, gallery_labels, chunk_size=chunk_size
                )
            results.update(open_set_metrics(matches, new_individual_threshold))
        return results
