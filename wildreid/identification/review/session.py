"""Review decisions without a browser: propose candidates for a query, record "same as X", "new
individual" or "skip", undo the last decision (also after a restart: the audit log remembers it).

Candidates are ranked by the gallery's methods exactly as `wildreid identify` ranks them (`scoring`,
`GalleryScorer`). A decision that names an individual adds the query photos to the gallery (embedding,
metadata, and, when the gallery keeps a keypoint cache, their keypoints and descriptors in the descriptor
index, so the local and fusion methods find them at once) and saves it as one atomic revision under the
gallery's writer lock (`wildreid.identification.store`), then appends one audit line
(`wildreid.identification.review.audit`). Uploaded photos are copied, content-addressed, into the review
folder (`<gallery>.review/images/` by default) so the gallery's `path` column points at files it owns; the
audit log is `<gallery>.review/audit.jsonl`. Photos are read by `uploads`; nothing a user types is used
as a path.
"""
from __future__ import annotations

import json
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from wildreid.embedding.images import load_crop
from wildreid.matching import LocalFeatureCache, LocalFeatureExtractor, LocalFeatures, LocalMatcher
from wildreid.matching.correspondences import verified_correspondences
from wildreid.matching.one_vs_many import DescriptorIndex

from ..gallery import Gallery
from ..gallery_methods import GalleryScorer
from ..model_tag import ModelTag
from ..store import GalleryBusyError, writer_lock

from .audit import AuditLog, gallery_revision, utc_now
from .drawing import draw_correspondences, side_by_side
from .scoring import THRESHOLD_UNIT, Ranking, rank
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, QueryPhoto, read_photos, store_photo

DECISIONS = ("same", "new", "skip")
NAME_PATTERN = re.compile(r"^[\w][\w .'-]{0,63}$")  # letters/digits first; no slashes, no control characters
Embed = Callable[[list[Image.Image]], np.ndarray]


@dataclass
class Candidate:
    identity: str
    probability: float | None
    score: float
    method: str
    image_id: str  # the individual's best-matching gallery image
    photo: int  # the query photo that matched it best
    global_score: float  # cosine of `photo` and `image_id`
    verified_matches: int  # verified correspondences of `photo` and `image_id`, drawn in `explanation`
    pair: np.ndarray  # query | gallery image
    explanation: np.ndarray  # the same pair with verified correspondences and their density
    note: str = ""  # why a picture is missing, if it is

    def summary(self) -> dict[str, Any]:
        return {"identity": self.identity, "probability": self.probability, "score": self.score,
                "method": self.method, "image_id": self.image_id, "global_score": self.global_score,
                "verified_matches": self.verified_matches}


@dataclass
class Proposal:
    id: str
    photos: list[QueryPhoto]
    species: str | None
    embeddings: np.ndarray
    features: list[LocalFeatures]
    ranking: Ranking
    candidates: list[Candidate]
    decided: bool = False


@dataclass
class _Decision:
    record: dict[str, Any]
    proposal: Proposal
    added_image_ids: list[str] = field(default_factory=list)


class ReviewSession:
    """One gallery under review. Thread-safe: the app serves several browser tabs.

    embed: PIL crops -> (N, D) L2-normalised embeddings of the model `model_tag` names.
    method: "auto" (the gallery's recorded per-species choice, else global), "global", "local" or "fusion",
        as for `wildreid identify` (`GalleryScorer`). Fusion uses the fit `wildreid calibrate --method
        fusion|auto` recorded for each species, and the app refuses to start without one for every species
        of the gallery rather than fit its own at start-up: a fit of its own would rank differently from
        `identify` on the same gallery, and would cost start-up time on every launch.
    threshold: overrides the gallery's calibrated new-individual cosine threshold.
    """

    def __init__(self, gallery_dir: str | os.PathLike, embed: Embed, model_tag: ModelTag, *,
                 review_dir: str | os.PathLike | None = None, method: str = "auto", top_k: int = 5,
                 threshold: float | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.gallery_dir, self.method = Path(gallery_dir), method
        self._load_gallery()  # refuses an unknown method, and local or fusion on a gallery without keypoints
        if method == "fusion":
            self.scorer.require_fusion(self.species)
        self.gallery.model_tag.require_same(model_tag, "the review app's embeddings")
        self.model_tag = model_tag
        self.embed = embed
        self.review_dir = Path(review_dir) if review_dir else self.gallery_dir.with_name(self.gallery_dir.name + ".review")
        self.audit = AuditLog(self.review_dir / "audit.jsonl")
        self.top_k, self.threshold, self.max_upload_bytes = int(top_k), threshold, int(max_upload_bytes)
        self.extractor = LocalFeatureExtractor(**(self.gallery.local_features_config or {}))
        self.matcher = LocalMatcher(method=self.extractor.method)
        self._lock = threading.RLock()
        self._proposals: dict[str, Proposal] = {}
        self._undo_stack: list[_Decision] = []

    # ------------------------------------------------------------------------------ browsing

    @property
    def species(self) -> list[str]:
        return sorted(self.gallery.metadata["species"].dropna().unique().tolist())

    def individuals(self, search: str = "") -> list[dict[str, Any]]:
        """Individuals whose name contains `search` (case-insensitive): identity, species, image count
        and the image id of a thumbnail, sorted by identity."""
        metadata = self.gallery.metadata
        needle = search.strip().lower()
        found = []
        for identity, group in metadata.groupby("identity", sort=True):
            if needle and needle not in str(identity).lower():
                continue
            found.append({"identity": str(identity), "species": group["species"].iloc[0],
                          "images": int(len(group)), "thumbnail": str(group["image_id"].iloc[0])})
        return found

    def gallery_crop(self, image_id: str) -> Image.Image:
        """The annotated crop of a gallery image (path and box from the gallery's own metadata)."""
        with self._lock:
            if image_id not in self._crop_cache:
                row = self.gallery.metadata.index[self.gallery.metadata["image_id"] == image_id]
                if len(row) == 0:
                    raise KeyError(f"no gallery image {image_id!r}")
                path = self.gallery.metadata.at[row[0], "path"]
                if not path:
                    raise ValueError(f"gallery image {image_id!r} has no stored path")
                extra = json.loads(self.gallery.metadata.at[row[0], "extra"] or "{}")
                self._crop_cache[image_id] = load_crop(path, extra.get("bbox"), float(extra.get("theta") or 0.0))
            return self._crop_cache[image_id]

    # ----------------------------------------------------------------------------- proposing

    def read_photos(self, files: Sequence[str | os.PathLike], bboxes: Sequence[Sequence[float] | None] | None = None,
                    names: Sequence[str] | None = None) -> list[QueryPhoto]:
        """Uploaded files as query photos (see `uploads.read_photos`), within this app's size limit."""
        return read_photos(files, bboxes, names, max_bytes=self.max_upload_bytes, center_box=self.gallery.center_box)

    def propose(self, photos: list[QueryPhoto], species: str | None = None) -> Proposal:
        """Rank the gallery's individuals (of `species`, or all) for the photos of one animal."""
        if species is not None and species not in self.species:
            raise ValueError(f"species {species!r} is not in this gallery; it holds {self.species}")
        embeddings = np.asarray(self.embed([photo.crop for photo in photos]), dtype=np.float32)
        features = [self.extractor.extract(photo.crop) for photo in photos]
        with self._lock:
            if len(self.gallery) == 0:
                raise ValueError("the gallery holds no images")
            ranking = rank(self.scorer, embeddings, features, species, self.top_k, self.threshold)
            candidates = [self._candidate(photos, features, ranked, ranking.method) for ranked in ranking.candidates]
            proposal = Proposal(uuid.uuid4().hex[:12], photos, species, embeddings, features, ranking, candidates)
            self._proposals = {**dict(list(self._proposals.items())[-31:]), proposal.id: proposal}  # bounded
            return proposal

    def proposal(self, proposal_id: str) -> Proposal:
        with self._lock:
            if proposal_id not in self._proposals:
                raise ValueError("this query is no longer open; upload it again")
            return self._proposals[proposal_id]

    def _candidate(self, photos: list[QueryPhoto], features: list[LocalFeatures], ranked, method: str) -> Candidate:
        image_id = str(self.gallery.metadata.at[ranked.row, "image_id"])
        query_crop = photos[ranked.photo].crop
        base = dict(identity=ranked.identity, probability=ranked.probability, score=ranked.score, method=method,
                    image_id=image_id, photo=ranked.photo, global_score=ranked.global_score)
        try:
            reference = self.gallery_crop(image_id)
        except (OSError, ValueError, KeyError) as error:  # a gallery file moved or unreadable: say so, go on
            blank = np.asarray(query_crop.convert("RGB").resize((256, 256)))
            return Candidate(**base, verified_matches=0, pair=blank, explanation=blank,
                             note=f"gallery image unavailable ({error})")
        if self.local_cache is not None and image_id in self.local_cache:
            reference_features = self.local_cache[image_id]
        else:
            reference_features = self.extractor.extract(reference)
        matches = verified_correspondences(self.matcher, features[ranked.photo], reference_features)
        explanation = draw_correspondences(query_crop, reference, matches, max_side=self.extractor.max_side,
                                           upscale=self.extractor.upscale)
        return Candidate(**base, verified_matches=matches.num_inliers, pair=side_by_side(query_crop, reference),
                         explanation=explanation)

    # ----------------------------------------------------------------------------- deciding

    def decide(self, proposal_id: str, decision: str, *, identity: str | None = None,
               name: str | None = None) -> dict[str, Any]:
        """Record "same" (as `identity`), "new" (individual called `name`) or "skip"; returns the audit record."""
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; use same, new or skip")
        with self._lock:
            proposal = self.proposal(proposal_id)
            if proposal.decided:
                raise ValueError("this query was already decided; undo first to change the decision")
            if decision == "same":
                if identity not in set(self.gallery.metadata["identity"]):
                    raise ValueError(f"{identity!r} is not an individual of this gallery")
            elif decision == "new":
                identity = self._new_identity(name, proposal.species)
            revision_before = self.revision
            added = [] if decision == "skip" else self._add(proposal, identity)
            record = self.audit.append({
                "id": uuid.uuid4().hex[:12], "time": utc_now(), "decision": decision,
                "identity": identity if decision != "skip" else None,
                "query": [{"file": p.name, "sha256": p.sha256, "bbox": p.bbox} for p in proposal.photos],
                "species": proposal.species, "method": proposal.ranking.method,
                "candidates": [c.summary() for c in proposal.candidates],
                "suggested_new": proposal.ranking.suggest_new, "threshold": proposal.ranking.threshold,
                "threshold_unit": THRESHOLD_UNIT, "note": proposal.ranking.note, "model": self.model_tag.to_dict(),
                "gallery_revision": revision_before, "gallery_revision_after": self.revision,
                "added_image_ids": added,
            })
            proposal.decided = True
            self._undo_stack.append(_Decision(record, proposal, added))
            return record

    def undo(self) -> dict[str, Any]:
        """Revert the last decision not yet undone (its images leave the gallery); returns the audit record.

        This session's own decisions come first, most recent first, and their queries open again (decide
        them anew without re-uploading). Once they are undone, or after a restart, the audit log is the
        memory: its last decision that no "undo" line reverts is undone, so undo works across restarts of
        the app on the same review folder (`query_reopened` is then False: upload the photos again to decide
        anew). Refused, with nothing changed, when the images the decision added are no longer in the gallery
        under its identity (the gallery was rebuilt or edited since)."""
        with self._lock:
            records = self.audit.records()
            undone = {record.get("undoes") for record in records if record.get("decision") == "undo"}
            while self._undo_stack and self._undo_stack[-1].record["id"] in undone:  # undone by another app
                self._undo_stack.pop()
            mine = self._undo_stack[-1] if self._undo_stack else None
            record = mine.record if mine else next(
                (r for r in reversed(records) if r.get("decision") in DECISIONS and r.get("id") not in undone), None)
            if record is None:
                raise ValueError(f"nothing to undo: every decision in {self.audit.path} is undone already"
                                 if records else f"nothing to undo: {self.audit.path} records no decision yet")
            added = [str(image_id) for image_id in record.get("added_image_ids") or []]
            metadata = self.gallery.metadata
            present = metadata[metadata["image_id"].isin(added)]
            missing = sorted(set(added) - set(present["image_id"]))
            strays = sorted(set(present.loc[present["identity"] != record.get("identity"), "image_id"]))
            if missing or strays:
                raise ValueError(f"cannot undo the {record.get('decision')} decision of {record.get('time')} "
                                 f"({record.get('identity')}): " + (f"its images {missing[:3]} are no longer in the "
                                 "gallery" if missing else f"its images {strays[:3]} now belong to another individual")
                                 + " (it was rebuilt or changed since); nothing was changed")
            revision_before = self.revision
            if added:
                self._remove(added)
            if mine is not None:
                self._undo_stack.pop()
                mine.proposal.decided = False
                self._proposals[mine.proposal.id] = mine.proposal  # decide it again without re-uploading
            return self.audit.append({
                "id": uuid.uuid4().hex[:12], "time": utc_now(), "decision": "undo", "undoes": record["id"],
                "undone_decision": record.get("decision"), "identity": record.get("identity"),
                "query": record.get("query"), "removed_image_ids": added, "query_reopened": mine is not None,
                "model": self.model_tag.to_dict(), "gallery_revision": revision_before,
                "gallery_revision_after": self.revision,
            })

    def _new_identity(self, name: str | None, species: str | None) -> str:
        name = (name or "").strip()
        if not NAME_PATTERN.match(name):
            raise ValueError(f"name {name!r} must be 1-64 letters, digits, spaces or . ' - _ (starting with a "
                             "letter or digit)")
        if species is None:
            if len(self.species) != 1:
                raise ValueError(f"choose the species of the new individual (this gallery holds {self.species})")
            species = self.species[0]
        identity = f"{species}/{name}"
        if identity in set(self.gallery.metadata["identity"]):
            raise ValueError(f"{identity} already exists; choose it as 'same as' or pick another name")
        return identity

    def _add(self, proposal: Proposal, identity: str) -> list[str]:
        image_ids = [f"review-{photo.sha256[:20]}" for photo in proposal.photos]
        present = sorted(set(image_ids) & set(self.gallery.metadata["image_id"]))
        if len(set(image_ids)) != len(image_ids) or present:
            raise ValueError(f"these photos are already in the gallery ({present or 'the same photo twice'})")
        species = identity.split("/", 1)[0] if "/" in identity else proposal.species
        paths = [store_photo(photo, self.review_dir / "images") for photo in proposal.photos]
        rows = [{"image_id": image_id, "identity": identity, "species": species, "path": str(path),
                 "source": "review", "original_name": photo.name, "bbox": photo.bbox}
                for image_id, photo, path in zip(image_ids, proposal.photos, paths)]

        def add() -> DescriptorIndex | None:
            # Extended in place, before the rows are added (it covers the gallery as loaded); the scorer that
            # holds it is replaced once the gallery is saved, or reloaded from disk if saving fails.
            index = self.scorer.descriptor_index()
            if index is not None:
                index.add(proposal.features)
            self.gallery.add(proposal.embeddings, rows, self.model_tag)
            if self.local_cache is not None:
                for image_id, features in zip(image_ids, proposal.features):
                    self.local_cache[image_id] = features
            return index

        self._write(add)
        return image_ids

    def _remove(self, image_ids: list[str]) -> None:
        """The gallery without `image_ids`: rebuilt through `Gallery.add`, which re-checks every row; its
        descriptor index is rebuilt by the save (an undo is rare, and a rebuild cannot drift)."""

        def remove() -> None:
            keep = ~self.gallery.metadata["image_id"].isin(image_ids).to_numpy()
            old = self.gallery
            rebuilt = Gallery(old.model_tag, approximate_threshold=old.approximate_threshold)
            rebuilt.add(old.embeddings[keep], old.metadata[keep].reset_index(drop=True), old.model_tag)
            rebuilt.calibration, rebuilt.created = old.calibration, old.created
            rebuilt.keep_local_features_of(old)
            if self.local_cache is not None:
                self.local_cache = LocalFeatureCache.from_features(
                    rebuilt.metadata["image_id"], self.local_cache.get_many(rebuilt.metadata["image_id"]),
                    self.local_cache.config)
            self.gallery = rebuilt

        self._write(remove)

    def _load_gallery(self) -> None:
        self.gallery = Gallery.load(self.gallery_dir)
        self.local_cache: LocalFeatureCache | None = None
        if self.gallery.local_features_config is not None:
            self.local_cache = Gallery.load_local_features(self.gallery_dir, self.gallery.local_features_config)
        self.scorer = GalleryScorer(self.gallery, self.gallery_dir, self.method, keypoints=self.local_cache)
        self.revision = gallery_revision(self.gallery_dir)
        self._crop_cache: dict[str, Image.Image] = {}

    def _write(self, change: Callable[[], DescriptorIndex | None]) -> None:
        """Apply `change` to the gallery in memory and save it as one atomic revision, under the gallery's
        writer lock; `change` returns the changed gallery's descriptor index when it has it (else the save
        builds it from the keypoint cache), saved in the same revision. Refused when the gallery on disk is no
        longer the revision this session loaded (another writer saved since: saving would drop its entries).
        After any failure the session reloads the gallery from disk, so what it shows is what is saved."""
        try:
            with writer_lock(self.gallery_dir, create=False):
                on_disk = gallery_revision(self.gallery_dir)
                if on_disk != self.revision:
                    raise GalleryBusyError(f"the gallery {self.gallery_dir} was changed by another process (revision "
                                           f"{on_disk}; this app loaded {self.revision}); nothing was saved: reload "
                                           "the page after restarting the app")
                try:
                    index = change()
                    self.gallery.save(self.gallery_dir, local_features=self.local_cache, descriptor_index=index,
                                      overwrite=True)
                    self.revision = gallery_revision(self.gallery_dir)
                    self.scorer = GalleryScorer(self.gallery, self.gallery_dir, self.method,
                                                keypoints=self.local_cache, descriptor_index=index)
                except BaseException:
                    self._load_gallery()
                    raise
        except GalleryBusyError as error:  # a clear message for the reviewer, as every other refusal
            raise ValueError(str(error)) from None
